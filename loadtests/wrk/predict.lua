-- wrk script: POST real employees (one JSON body per line of BODIES) with an optional bearer token.
-- env: BODIES (file), TOKEN (optional), WRK_PATH (default /predict/attrition)
local bodies = {}
local i = 0
local token = os.getenv("TOKEN")
local path = os.getenv("WRK_PATH") or "/predict/attrition"

function init(args)
  for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
  i = math.random(#bodies)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if token and token ~= "" then wrk.headers["Authorization"] = "Bearer " .. token end
end

function request()
  i = i % #bodies + 1
  return wrk.format(nil, path, nil, bodies[i])
end

function done(summary, latency, requests)
  local s = summary.duration / 1e6
  local non2xx = summary.errors.status
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format(
    "RESULT requests=%d seconds=%.2f rps=%.1f p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f non2xx=%d socket_errors=%d\n",
    summary.requests, s, summary.requests / s, latency:percentile(50) / 1000,
    latency:percentile(90) / 1000, latency:percentile(99) / 1000, non2xx, errors))
end
