-- Counts of requests in flight in the shared dict (per expert, per replica), each kept twice: the count
-- every worker reads, and this worker's own share of it under its pid. nginx respawns a worker that
-- crashed, but the counts its requests held stayed: an expert it had filled stayed full until nginx
-- restarted. The worker that replaces it (the same ngx.worker.id) finds the dead one's pid and takes its
-- shares off the counts. A worker that a reload replaced is still alive while it drains, and keeps its
-- own shares.

local C = {}
local slots
local mine -- this worker's prefix: "w<pid>\t"

--- The dict the counts are kept in (init_by_lua).
function C.load(dict)
  slots = dict
end

--- Add `delta` to the count `key` (and to this worker's share); the new count, as incr returns it. A
--- count that is not there (never taken: the dict was full) is not taken below zero.
function C.add(key, delta)
  local init = delta > 0 and 0 or nil
  local total, err = slots:incr(key, delta, init)
  if total then slots:incr(mine .. key, delta, init) end
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

--- Take a dead worker's shares off the counts.
local function recover(pid)
  local prefix = "w" .. pid .. "\t"
  local taken = 0
  for _, key in ipairs(slots:get_keys(0)) do
    if key:sub(1, #prefix) == prefix then
      local share = slots:get(key) or 0
      if share ~= 0 then slots:incr(key:sub(#prefix + 1), -share, 0) end
      slots:delete(key)
      taken = taken + share
    end
  end
  if taken > 0 then
    ngx.log(ngx.WARN, "worker ", pid, " ended holding ", taken, " counts of requests in flight: taken off")
  end
end

--- init_worker_by_lua: claim this worker's id; a predecessor with that id that is dead crashed.
function C.start_worker()
  local pid = ngx.worker.pid()
  mine = "w" .. pid .. "\t"
  local slot = "pid\t" .. ngx.worker.id()
  local before = slots:get(slot)
  slots:set(slot, pid)
  if before and before ~= pid and not alive(before) then recover(before) end
end

return C
