-- wrk script: N pipelined `GET /` per write (default 16), the TechEmpower "plaintext" way.
--
-- wrk counts the requests in the string request() returns, writes the whole string at
-- once, and writes again only after that many responses came back, so the server sees
-- batches of N requests in one read. Each response counts as one request in wrk's totals;
-- its latency figures are per batch.
--
--   wrk -t1 -c64 -d10s --latency -s bench/pipeline.lua http://127.0.0.1:18080/ -- 16

local batch

init = function(args)
  local depth = tonumber(args[1]) or 16
  local requests = {}
  for i = 1, depth do
    requests[i] = wrk.format()
  end
  batch = table.concat(requests)
end

request = function()
  return batch
end
