-- wrk -s counter.lua http://HOST:PORT: +1 on one of 1,000 counters, as dotkv-bench's workload of that name.
wrk.headers["Content-Type"] = "application/json"
request = function()
  return wrk.format("POST", "/v1/counter/bench-" .. math.random(0, 999), nil, '{"add":1}')
end
