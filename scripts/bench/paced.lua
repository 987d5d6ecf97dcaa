-- wrk pacing for P8: every connection waits this long before each request,
-- so 64 connections ask /status ~6,400 times a second instead of flat out
-- (flat out on two cores, wrk itself would take the CPU the loader needs).
local pause_ms = tonumber(os.getenv("BENCH_WRK_PAUSE_MS") or "10")

function delay()
    return pause_ms
end
