-- Counts of requests in flight in the shared dict (per expert, per replica), each kept twice: the count
-- every worker reads, and this worker's own share of it under its pid. nginx respawns a worker that
-- crashed, but the counts its requests held stayed: an expert it had filled stayed full until nginx
-- restarted. Every worker that starts, and worker 0 every `SWEEP_S`, takes the shares of every dead
-- pid off the counts (a worker that crashed while it drained after a reload is not respawned, so its
-- successor alone would miss it). A worker that a reload replaced is alive while it drains, and keeps
-- its shares; one that exited left shares of 0, which the sweep deletes.

local C = {}
local SWEEP_S = 30
local slots
local mine -- this worker's prefix: "w<pid>\t"

--- The dict the counts are kept in (init_by_lua).
function C.load(dict)
  slots = dict
end

--- Add `delta` to the count `key` and to this worker's share; the new count, as incr returns it. A count
--- that is not there (evicted, or never taken: the dict was full) is not taken below zero. The share is
--- added first and taken back last, so a worker killed in between leaves a count short, not one over
--- (an expert a little over its limit, rather than full for good).
function C.add(key, delta)
  if delta > 0 then
    slots:incr(mine .. key, delta, 0)
    return slots:incr(key, delta, 0)
  end
  local total, err = slots:incr(key, delta)
  slots:incr(mine .. key, delta)
  return total, err
end

--- Whether process `pid` runs; true where /proc cannot tell (no worker's shares are then taken off).
local function alive(pid)
  local here = io.open("/proc/self/stat")
  if not here then return true end
  here:close()
  local there = io.open("/proc/" .. pid .. "/stat")
  if not there then return false end
  there:close()
  return true
end

--- Take a dead worker's shares (`keys`, under `prefix`) off the counts, never below zero.
local function recover(pid, prefix, keys)
  local taken = 0
  for _, key in ipairs(keys) do
    local share = slots:get(key) or 0
    if share ~= 0 then
      local total = slots:incr(key:sub(#prefix + 1), -share)
      if total and total < 0 then slots:incr(key:sub(#prefix + 1), -total) end
      taken = taken + share
    end
    slots:delete(key)
  end
  if taken ~= 0 then
    ngx.log(ngx.WARN, "worker ", pid, " ended holding ", taken, " counts of requests in flight: taken off")
  end
end

--- Every dead pid's shares off the counts; each pid by one worker only (a lock for a minute).
local function sweep()
  local by_pid = {}
  for _, key in ipairs(slots:get_keys(0)) do
    local pid = key:match("^w(%d+)\t")
    if pid then
      by_pid[pid] = by_pid[pid] or {}
      table.insert(by_pid[pid], key)
    end
  end
  for pid, keys in pairs(by_pid) do
    if tonumber(pid) ~= ngx.worker.pid() and not alive(pid) and slots:add("recovering\t" .. pid, true, 60) then
      recover(pid, "w" .. pid .. "\t", keys)
    end
  end
end

--- init_worker_by_lua: this worker's prefix, and a sweep now (worker 0: also every `SWEEP_S`).
function C.start_worker()
  mine = "w" .. ngx.worker.pid() .. "\t"
  local ok, err = pcall(sweep)
  if not ok then ngx.log(ngx.ERR, "could not take dead workers' counts off: ", err) end
  if ngx.worker.id() == 0 then
    ngx.timer.every(SWEEP_S, function(premature)
      if not premature then pcall(sweep) end
    end)
  end
end

return C
