-- wrk -s setadd.lua http://HOST:PORT: a never-used element into one of 100 sets, as dotkv-bench's workload of that name.
local counter = 1
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
local seq = 0
local salt = tostring(os.time())
wrk.headers["Content-Type"] = "application/json"
request = function()
  seq = seq + 1
  return wrk.format("POST", "/v1/set/bench-" .. math.random(0, 99), nil,
    '{"add":["e' .. salt .. '-' .. tid .. '-' .. seq .. '"]}')
end
