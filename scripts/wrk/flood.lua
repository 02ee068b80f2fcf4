-- scripts/loadbench.py, scenario "flood": one agent token sending as fast as
-- wrk can, under TELEMETRY_RATE=1000/m, so nearly every request is a 429.
--
--   wrk -t1 -c64 -d10s --latency -s scripts/wrk/flood.lua http://127.0.0.1:3000/api/v1/telemetry/

wrk.method = "POST"
wrk.body = '[{"event":"process_start","host":"ws-0001","pid":4242}]'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Agent-Token"] = "AGENT-FLOOD"
