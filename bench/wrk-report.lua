-- wrk script: prints wrk's own summary as one JSON line (latencies in µs),
-- so the benchmark reads numbers instead of parsing wrk's text.
-- WRK_DELAY_MS: each connection waits that long after a reply before its
-- next request (a light, steady load; the wait is not counted as latency).
local pause = tonumber(os.getenv("WRK_DELAY_MS") or "")
if pause then
  delay = function()
    return pause
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
