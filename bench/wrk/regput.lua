-- wrk -s regput.lua http://HOST:PORT: a 100-byte JSON string into one of 1,000 registers, as dotkv-bench's workload of that name.
local v = '"' .. string.rep("abcdefghijklmnopqrstuvwxyz", 4):sub(1, 98) .. '"'
wrk.headers["Content-Type"] = "application/json"
request = function()
  return wrk.format("PUT", "/v1/register/bench-" .. math.random(0, 999), nil, v)
end
