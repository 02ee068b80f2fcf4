-- scripts/loadbench.py, scenario "hot": every request from one of 100 agent
-- tokens, each thus sending hundreds of requests a second, under a rate so
-- high (the bench sets TELEMETRY_RATE=1000000000/m) that nothing is denied:
-- the keys lease mode is for.
--
--   wrk -t1 -c64 -d10s --latency -s scripts/wrk/hot.lua http://127.0.0.1:3000/api/v1/telemetry/

local POOL = 100
local requests = {}

function init(args)
  -- Each thread draws its own sequence.
  math.randomseed(os.time() + tonumber(tostring(requests):match("0x(%x+)") or "0", 16))
  local body = '[{"event":"process_start","host":"ws-0001","pid":4242}]'
  for i = 1, POOL do
    requests[i] = wrk.format("POST", nil, {
      ["Content-Type"] = "application/json",
      ["X-Agent-Token"] = string.format("AGENT-%03d", i),
    }, body)
  end
end

function request()
  return requests[math.random(POOL)]
end
