-- The nginx router's replicas (`gateway.replicas`' choice): which replica of an expert a request goes to,
-- and what is known of each: its failures, its load report and its health. route.lua calls `pick`,
-- `sent`, `failed`, `answered` and `let_go`.
--
-- Each replica is an nginx upstream of its own, shared by every expert it serves (one pool of idle
-- connections per server). A replica that failed `failures_to_down` times in a row, by requests or by
-- health checks, is passed over until a request or a check succeeds on it (or for `fail_timeout_s`
-- after its last failure, when nothing checks it); among the others, the least busy: its own load report (read every
-- `load_interval_s`, as `gateway.load` reads it) plus what this nginx sent it since that read began,
-- never less than this nginx's requests in flight on it. Worker 0 reads the reports and runs the health
-- checks (every `health_interval_s`, each replica's `health_path`s), and the shared dict shares them.
-- A replica is one server for every expert on it, with one count of failures in a row, except where its
-- experts name different health paths (a Triton serving several models: `/v2/models/NAME/ready`): each
-- path then has a count of its own, and a path that fails takes the replica out for its experts only, as
-- the gateway judges each expert's path apart. A replica whose host name did not resolve when
-- the configuration was written is neither checked nor read (cosockets resolve no names without a
-- `resolver`; nginx itself resolved its upstream): requests alone judge it.

local counts = require "counts"

local find, gmatch = string.find, string.gmatch

local R = {}
local slots, experts, replicas, failures_to_down, fail_timeout
local load_aware, load_interval, health_interval
local fail_ttl -- how long a count of failures in a row lasts: past the next health check's end

--- router.json's settings (in init_by_lua, by route.lua's load), and the dict the counts are kept in.
function R.load(meta, dict)
  slots, experts, replicas = dict, meta.experts, meta.replicas
  failures_to_down, fail_timeout = meta.failures_to_down, meta.fail_timeout_s
  load_aware, load_interval, health_interval = meta.load_aware, meta.load_interval_s, meta.health_interval_s
  fail_ttl = math.max(fail_timeout, health_interval + math.max(1, health_interval) + 1)
  for _, expert in pairs(experts) do -- a replica one of several of an expert's is scored when picked
    if #expert.replicas > 1 then
      for _, name in ipairs(expert.replicas) do replicas[name].scored = true end
    end
  end
end

function R.url(name)
  return replicas[name].url
end

--- The key of the failures in a row of replica `name` on `path`: the replica's own where it has one
--- health path (the usual case: no second count to read), the path's where its experts name several.
local function path_key(name, path)
  if #replicas[name].health == 1 then return "fails\t" .. name end
  return "fails\t" .. name .. "\t" .. path
end

--- Whether replica `name` takes requests for an expert whose health path is `path`.
local function live(name, path)
  if (slots:get("fails\t" .. name) or 0) >= failures_to_down then return false end
  return #replicas[name].health == 1 or (slots:get(path_key(name, path)) or 0) < failures_to_down
end

local function busy(name)
  local inflight = slots:get("busy\t" .. name) or 0
  local report = slots:get("report\t" .. name)
  if not report then return inflight end
  local since = (slots:get("sent\t" .. name) or 0) - (slots:get("seen\t" .. name) or 0)
  return math.max(inflight, report + since)
end

--- How many of `cluster`'s expert's replicas are live, and how many it has.
function R.healthy(cluster)
  local expert = experts[tostring(cluster)]
  local names, count = expert.replicas, 0
  for _, name in ipairs(names) do
    if live(name, expert.health_path) then count = count + 1 end
  end
  return count, #names
end

--- The replica of `cluster`'s expert to send to: the least busy live one not in `tried`; nil when none.
function R.pick(cluster, tried)
  local expert = experts[tostring(cluster)]
  local names, path = expert.replicas, expert.health_path
  if #names == 1 then
    return (not tried[names[1]] and live(names[1], path)) and names[1] or nil
  end
  local best, least
  for _, name in ipairs(names) do
    if not tried[name] and live(name, path) then
      local load = busy(name)
      if not best or load < least then best, least = name, load end
    end
  end
  return best
end

--- The replicas this request has been sent to, as a set, and how many.
function R.tried()
  local tried, count = {}, 0
  for name in gmatch(ngx.var.expert_tried, "[^,]+") do
    tried[name], count = true, count + 1
  end
  return tried, count
end

--- Count a request sent to `name`: only replicas chosen among others are counted (`scored`), so a
--- request to an expert's one replica pays no count it never reads.
function R.sent(name)
  if replicas[name].scored then
    counts.add("busy\t" .. name, 1)
    slots:incr("sent\t" .. name, 1, 0)
  end
end

--- Stop counting this request on its replica ($expert_replica).
function R.let_go()
  local name = ngx.var.expert_replica
  if name ~= "" and replicas[name].scored then counts.add("busy\t" .. name, -1) end
  ngx.var.expert_replica = ""
end

--- What a count of failures is of: the replica, or the replica for the experts of one health path.
local function what(name, key)
  local url = replicas[name].url
  return key == "fails\t" .. name and url or (url .. " (its experts checked on " .. key:match("[^\t]*$") .. ")")
end

--- A failure of `key` (`path_key`'s; the replica's own by default): `failures_to_down` in a row take it
--- out; logged once, when it goes.
local function fail(name, why, key)
  local fails = slots:incr(key, 1, 0)
  slots:expire(key, fail_ttl) -- from the latest failure: in a row, however far apart the checks are
  if fails == failures_to_down then ngx.log(ngx.WARN, "replica ", what(name, key), " marked down: ", why) end
end

--- A success of `key`: its failures in a row start again.
local function pass(name, key)
  local fails = slots:get(key)
  if fails then
    slots:delete(key)
    if fails >= failures_to_down then ngx.log(ngx.WARN, "replica ", what(name, key), " is back up") end
  end
end

--- A request's failure before its first byte: the replica's, whichever expert it was for.
function R.failed(name, why)
  fail(name, why, "fails\t" .. name)
end

--- An answer below 500: the replica's failures in a row start again.
function R.answered(name)
  pass(name, "fails\t" .. name)
end

--- GET `path` from a replica: the answer's text when it is a 200, else nil and why.
local function get(replica, path, timeout_s)
  local sock = ngx.socket.tcp()
  local ms = math.floor(timeout_s * 1000)
  sock:settimeouts(ms, ms, ms)
  local ok, err = sock:connect(replica.host, replica.port)
  if not ok then return nil, err end
  sock:send("GET " .. path .. " HTTP/1.0\r\nHost: " .. replica.authority .. "\r\n\r\n")
  local text
  text, err = sock:receive("*a")
  sock:close()
  if not text then return nil, err end
  if not find(text, "^HTTP/1%.%d 200") then return nil, "answered " .. (text:match("^HTTP/1%.%d (%d+)") or "?") end
  return text
end

--- What a replica says of its load in its Prometheus text (vLLM's names, summed over models): running
--- plus waiting requests, or nil when it reports neither (it is then judged by this nginx's counts).
local function reported(text)
  local load, found = 0, false
  for name, value in gmatch(text, "\n(vllm:num_requests_%a+)[^\n]- ([^%s]+)") do
    if name == "vllm:num_requests_running" or name == "vllm:num_requests_waiting" then
      local number = tonumber(value)
      if number then load, found = load + number, found or name == "vllm:num_requests_running" end
    end
  end
  return found and load or nil
end

--- Read one replica's /metrics; the report stands for three intervals, then the replica is judged by
--- this nginx's own counts again. `seen`: the sends made before the read began, which it may show.
local function read_load(name)
  if not slots:add("reading\t" .. name, true, 5) then return end -- the last read of it is still under way
  local seen = slots:get("sent\t" .. name) or 0
  local text = get(replicas[name], "/metrics", 1)
  local load = text and reported("\n" .. text)
  if load then
    local ttl = 3 * load_interval + 1
    slots:set("report\t" .. name, load, ttl)
    slots:set("seen\t" .. name, seen, ttl)
  else
    slots:delete("report\t" .. name)
  end
  slots:delete("reading\t" .. name)
end

--- Check one replica's health paths (every expert's on it), each counted under its `path_key`. Where they
--- are several, one that answers 200 shows the server up: the replica's own failures in a row (requests')
--- start again, and a path that fails takes out only its experts.
local function check(name)
  local timeout = math.max(1, health_interval)
  if not slots:add("checking\t" .. name, true, timeout + 1) then return end -- the last check still runs
  local replica = replicas[name]
  local up = false
  for _, path in ipairs(replica.health) do
    local text, err = get(replica, path, timeout)
    if text then
      up = true
      pass(name, path_key(name, path))
    else
      fail(name, ("health check of %s failed: %s"):format(path, err), path_key(name, path))
    end
  end
  if up then pass(name, "fails\t" .. name) end
  slots:delete("checking\t" .. name)
end

--- Now and then every `interval_s`, `step(name)` for each of `names` at once (light threads: one slow
--- replica holds no other's).
local function every(interval_s, step, names)
  if #names == 0 then return end
  local function round(premature)
    if premature then return end
    local threads = {}
    for i, name in ipairs(names) do threads[i] = ngx.thread.spawn(step, name) end
    for _, thread in ipairs(threads) do ngx.thread.wait(thread) end
  end
  ngx.timer.at(0, round)
  ngx.timer.every(interval_s, round)
end

--- init_worker_by_lua: worker 0 checks every replica's health, and reads the load reports of every
--- replica of an expert that has more than one (where they decide something).
function R.start_worker()
  if ngx.worker.id() ~= 0 then return end
  local all, scored = {}, {}
  for name, replica in pairs(replicas) do
    if replica.resolved then
      all[#all + 1] = name
      if replica.scored then scored[#scored + 1] = name end
    else
      ngx.log(ngx.WARN, "replica ", replica.url, "'s host name did not resolve when the configuration was ",
        "written: it is not health-checked and its load is not read (write the configuration again here)")
    end
  end
  every(health_interval, check, all)
  if load_aware then every(load_interval, read_load, scored) end
end

return R
