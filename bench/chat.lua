-- wrk script (`bench/wrk.py` runs it): POST a small chat completion on every request; at the end, print the
-- figures as one JSON line after a marker, with the latency histogram (microseconds, count) so that the
-- harness can pool rounds. Settings come from the environment: wrk passes none to scripts.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
local authorization = os.getenv("BENCH_AUTHORIZATION")
if authorization and authorization ~= "" then
  wrk.headers["Authorization"] = authorization
end

function done(summary, latency, requests)
  local e = summary.errors
  local histogram = {}
  for i = 1, #latency do -- #latency distinct values; latency(i) is the i-th and how many took it
    local us, count = latency(i)
    histogram[i] = string.format("[%d,%d]", us, count)
  end
  io.write(string.format(
    'BENCH-JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,'
      .. '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.3f,"histogram":[%s]}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, table.concat(histogram, ",")))
end
