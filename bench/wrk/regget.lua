-- wrk -s regget.lua http://HOST:PORT: read one of 1,000 registers (run regput.lua first, or they answer 404), as dotkv-bench's workload of that name.
request = function()
  return wrk.format("GET", "/v1/register/bench-" .. math.random(0, 999))
end
