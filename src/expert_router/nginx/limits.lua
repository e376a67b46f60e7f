-- The nginx router's limits: each request's slot of its expert, taken and given back, and the queue a
-- request past `max_inflight_per_expert` waits in. route.lua calls `admit`, `release` and `abandon`.
--
-- The slots are counted by this nginx (a count per expert in the shared dict, for all its workers) or,
-- with limit_scope: shared, in the gateway's own store: leases in Redis, with the same scripts, keys and
-- lease term as `gateway.shared_limit`, so routers and gateways in front of one expert share one count.
-- A request holds a lease, named by its $request_id, while it runs; each worker renews the leases it
-- holds every third of `lease_s` (one that dies frees them within `lease_s`) and gives them back from a
-- timer, as cosockets are not allowed in the log phase, in one call per expert for all that ended
-- meanwhile. Either way, requests waiting for a slot queue per worker and expert in arrival order; one
-- poller per queue takes the head's slot, woken when this worker frees one, else backing off from 2 to
-- 50 ms (a slot freed by another worker or instance is found by polling).

local cjson = require "cjson.safe"
local semaphore = require "ngx.semaphore"
local counts = require "counts"

local find = string.find

local L = {}
local FIRST_BACKOFF_S, LAST_BACKOFF_S = 0.002, 0.05 -- the gateway's
local slots, experts, max_inflight, queue_timeout
local store, redis -- the shared store (router.json's limit_store; nil: this nginx counts alone), its client
local held = {} -- lease key -> { lease = true }: the leases this worker holds and renews
local queues = {} -- slot key -> { first = i, last = j, [i] = waiter, ... }: this worker's waiting requests
local freed = {} -- slot key -> a semaphore its queue's poller waits on, posted when this worker frees one
local returning, returning_soon = {}, false -- lease key -> { lease, ... } to give back, and its timer
local reachable = true

--- router.json's settings (in init_by_lua, by route.lua's load), and the dict the counts are kept in.
function L.load(meta, dict)
  slots, experts, max_inflight, queue_timeout = dict, meta.experts, meta.max_inflight, meta.queue_timeout_s
  if meta.limit_store ~= cjson.null then
    store = meta.limit_store
    redis = require(store.module)
    for _, expert in pairs(experts) do expert.lease_key = store.key_prefix .. expert.model end
  end
end

--- Give back the count this request holds under `prefix`, named by its variable `holder` (empty: none).
function L.give_back(holder, prefix)
  local name = ngx.var[holder]
  if name ~= "" then
    counts.add(prefix .. name, -1)
    ngx.var[holder] = ""
  end
end

--- Wake the poller of `key`'s queue in this worker, if it waits: a slot was freed.
local function wake(key)
  local sema = freed[key]
  if sema and sema:count() < 0 then sema:post(1) end
end

--- Log the store's reachability once per change (per worker), not once per request.
local function went(ok, err)
  if ok ~= reachable then
    reachable = ok
    ngx.log(ngx.WARN, store.where, ok and " is reachable again" or (" cannot be reached: " .. tostring(err)))
  end
end

--- `command(red)` on a kept-alive connection to the store: its answer, or nil and why.
local function with_store(command)
  local red = redis:new()
  red:set_timeout(math.max(1000, store.lease_s / 3 * 1000)) -- the gateway's socket timeout
  local ok, err
  if store.port == cjson.null then -- a Unix socket: "unix:/path"
    ok, err = red:connect(store.host)
  else
    ok, err = red:connect(store.host, store.port)
  end
  if ok and red:get_reused_times() == 0 then
    if store.password ~= cjson.null then
      if store.username ~= cjson.null then ok, err = red:auth(store.username, store.password)
      else ok, err = red:auth(store.password) end
    end
    if ok and store.db ~= 0 then ok, err = red:select(store.db) end
  end
  local answer
  if ok then answer, err = command(red) end
  if not ok or not answer then -- nil: no answer; false: the store's error reply
    red:close()
    went(false, err)
    return nil, err
  end
  red:set_keepalive(10000, 64)
  went(true)
  return answer
end

--- One of `gateway.shared_limit`'s scripts, by its digest (sent whole the first time the store lacks it).
local function script(red, name, key, ...)
  local answer, err = red:evalsha(store[name .. "_sha"], 1, key, ...)
  if answer == false and find(err or "", "^NOSCRIPT") then answer, err = red:eval(store[name], 1, key, ...) end
  return answer, err
end

--- `command(red, part)` for each part of `list` of up to 1,000 items (LuaJIT's unpack takes ~8,000 at most).
local function in_parts(list, command)
  for first = 1, #list, 1000 do
    local part = { unpack(list, first, math.min(first + 999, #list)) }
    with_store(function(red) return command(red, part) end)
  end
end

--- Timer: give back every lease queued for it, one call per expert, then wake that expert's poller.
local function return_leases()
  while next(returning) do
    local batch = returning
    returning = {}
    for key, leases in pairs(batch) do
      in_parts(leases, function(red, part) return red:zrem(key, unpack(part)) end) -- failed: they lapse
      wake(key)
    end
  end
  returning_soon = false
end

local function give_lease_back(key, lease)
  local mine = held[key]
  if mine then mine[lease] = nil end
  local leases = returning[key] or {}
  returning[key], leases[#leases + 1] = leases, lease
  if not returning_soon then
    local ok, err = ngx.timer.at(0, return_leases)
    returning_soon = ok and true or false
    if not ok then ngx.log(ngx.WARN, "cannot give leases back now (", err, "): they lapse within lease_s") end
  end
end

--- A slot of `key`: true when taken, false when all are held, nil and why when the store is out of reach.
local function take(key, lease)
  if not store then
    local count, err = counts.add(key, 1)
    if not count then -- the dict is full (it evicts before it fails): admitted uncounted, its end would
      ngx.log(ngx.ERR, "cannot count ", key, ": ", err) -- take back another request's slot
      return false
    end
    if count <= max_inflight then return true end
    counts.add(key, -1)
    return false
  end
  local taken, err = with_store(function(red) return script(red, "take", key, max_inflight, store.lease_s, lease) end)
  if taken == nil then -- no answer (a timeout, say): the store may have taken the slot all the same
    give_lease_back(key, lease)
    return nil, err
  end
  if taken ~= 1 then return false end
  local mine = held[key] or {}
  held[key], mine[lease] = mine, true
  return true
end

--- Give back a slot taken for a request that is gone.
local function give(key, lease)
  if store then return give_lease_back(key, lease) end
  counts.add(key, -1)
  wake(key)
end

--- Timer: take slots for a queue's waiters, head first, until none waits.
local function poll(_, key)
  local queue, pause = queues[key], FIRST_BACKOFF_S
  while queue.first <= queue.last do
    local head = queue[queue.first]
    if head.gone then
      queue[queue.first], queue.first = nil, queue.first + 1
    else
      local taken, err = take(key, head.lease)
      if taken == nil then -- the store is out of reach: every waiter hears so now
        for i = queue.first, queue.last do
          queue[i].err = err
          queue[i].sema:post(1)
          queue[i] = nil
        end
        queue.first = queue.last + 1
      elseif taken then
        queue[queue.first], queue.first = nil, queue.first + 1
        head.taken = true
        if head.gone then give(key, head.lease) else head.sema:post(1) end
        pause = FIRST_BACKOFF_S
      else
        freed[key]:wait(pause * (0.5 + math.random()))
        pause = math.min(pause * 2, LAST_BACKOFF_S)
      end
    end
  end
  queue.polling = false
end

--- A slot of `key` for this request (`lease`), waiting in this worker's queue up to `queue_timeout_s`
--- when `wait`: true when taken, false when full, nil and why when the store is out of reach. While the
--- store is asked or the queue waited in, ngx.ctx.pending holds what the log phase must undo should the
--- client leave meanwhile (`lua_check_client_abort` ends the request there).
local function queued(key, lease, wait)
  local queue = queues[key]
  if not queue or queue.first > queue.last then
    if store then ngx.ctx.pending = { key = key, lease = lease } end
    local taken, err = take(key, lease) -- with a store this waits for its answer, and other requests run
    ngx.ctx.pending = nil
    if taken ~= false or not wait or queue_timeout == 0 then return taken, err end
    -- Read again: a request that found the expert full meanwhile may have made the queue. Made a second
    -- time, it replaced the first, whose waiters no poller served (429 after the whole queue timeout).
    queue = queues[key]
  elseif not wait then
    return false -- requests of this worker wait for it: full
  end
  if not queue then
    queue = { first = 1, last = 0 }
    queues[key], freed[key] = queue, freed[key] or semaphore.new()
  end
  local waiter = { lease = lease, sema = semaphore.new() }
  queue.last = queue.last + 1
  queue[queue.last] = waiter
  if not queue.polling then
    local ok, err = ngx.timer.at(0, poll, key)
    if not ok then
      waiter.gone = true
      return nil, "cannot start a poller: " .. err
    end
    queue.polling = true
  end
  ngx.ctx.pending = { key = key, lease = lease, waiter = waiter }
  waiter.sema:wait(queue_timeout)
  ngx.ctx.pending = nil
  if waiter.err then return nil, waiter.err end
  if not waiter.taken then -- timed out; the poller gives back a slot it takes for it from now on
    waiter.gone = true
    return false
  end
  return true
end

--- Take a slot of `cluster`'s expert, waiting up to `queue_timeout_s` when `wait` (the routed expert:
--- back-pressure on the expert the prompt belongs to) and not at all otherwise (a full fallback expert
--- is passed over). True when taken, false when full, nil and why when the store is out of reach.
function L.admit(cluster, wait)
  local count = "inflight\t" .. cluster
  local lease = store and ngx.var.request_id -- 32 random hex digits; this nginx's own count needs none
  local taken, err = queued(store and experts[tostring(cluster)].lease_key or count, lease, wait)
  if taken == nil then
    return nil, store and ("the shared limit store (%s) cannot be reached (%s)"):format(store.where, err) or err
  end
  if not taken then return false end
  if store then
    counts.add(count, 1) -- this nginx's own count too, for /metrics
    ngx.var.expert_lease = lease
  end
  ngx.var.expert_admitted = cluster
  return true
end

--- Give back the slot this request holds, if any (at its end, or when it moves to another expert).
function L.release()
  local cluster = ngx.var.expert_admitted
  if cluster == "" then return end
  L.give_back("expert_admitted", "inflight\t")
  if store then
    give_lease_back(experts[cluster].lease_key, ngx.var.expert_lease)
    ngx.var.expert_lease = ""
  else
    wake("inflight\t" .. cluster)
  end
end

--- The log phase of a request whose client left while it took or waited for a slot: its place in the
--- queue, and a slot taken or being taken for it (the store ignores a lease it does not hold).
function L.abandon()
  local pending = ngx.ctx.pending
  if not pending then return end
  if pending.waiter then pending.waiter.gone = true end
  if not pending.waiter or pending.waiter.taken then give(pending.key, pending.lease) end
end

--- Push the lapse of every lease this worker holds forward (`gateway.shared_limit`'s renewal).
local function renew_leases()
  local keys = {} -- first: `held` gains keys while a renewal waits for the store
  for key in pairs(held) do keys[#keys + 1] = key end
  for _, key in ipairs(keys) do
    local leases = {}
    for lease in pairs(held[key]) do leases[#leases + 1] = lease end
    in_parts(leases, function(red, part) return script(red, "renew", key, store.lease_s, unpack(part)) end)
  end
end

--- A worker that is exiting (a reload, a graceful stop) still relays its streams: it renews their
--- leases until it holds none (ngx.timer.every stops at once).
local function renew_while_held()
  while next(held) do
    local any = false
    for _, mine in pairs(held) do any = any or next(mine) ~= nil end
    if not any then return end
    renew_leases()
    ngx.sleep(store.lease_s / 3)
  end
end

--- init_worker_by_lua: every worker renews the leases it holds.
function L.start_worker()
  if not store then return end
  ngx.timer.every(store.lease_s / 3, function(premature)
    if premature then ngx.timer.at(0, renew_while_held) else renew_leases() end
  end)
end

return L
