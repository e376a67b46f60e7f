-- The gateway's routing decision inside nginx (lua-nginx-module, LuaJIT): read the body, classify the
-- prompt with the exported classifier, name the expert's model in the body, and let nginx relay the
-- stream from the expert's upstream. Written by `expert-router nginx-router`; see its module docstring
-- (expert_router/nginx/__init__.py) for what it does and does not do.
--
-- The classifier is the Python gateway's l2 fast path (`Classifier._distances_one_l2`): the rows of a
-- prompt's vocabulary terms (each row its idf-weighted SVD projection and its k centroid products) are
-- summed, and |r - c|^2 = |c|^2 - 2 r.c / |r| + 1. Tokens: lower-case, maximal runs of [A-Za-z0-9_]
-- for ASCII text (as `ascii_word_tokens`), PCRE's Unicode \w\w+ otherwise (non-ASCII capitals
-- lower-cased with the table of Python's str.lower that `expert-router nginx-router` writes).

local cjson = require "cjson.safe"
local ffi = require "ffi"

local byte, find, sub, lower, gmatch = string.byte, string.find, string.sub, string.lower, string.gmatch

local M = {}
local vocabulary, rows, width, dims, k, centroid_sq, acc
local model_name, experts, by_model, max_inflight, queue_timeout, fallback, max_attempts
local slots -- ngx.shared.expert_router: requests in flight per expert, and the counts /metrics serves

local lower_case -- every non-ASCII character that Python's str.lower changes -> what it makes of it
local error_types -- status (a string) -> OpenAI error type: the gateway's own table (`http.ERROR_TYPES`)

--- Load what `expert-router nginx-router` wrote into `dir` (once, in init_by_lua: shared by every worker).
function M.load(dir)
  local file = assert(io.open(dir .. "/router.json", "rb"))
  local meta = assert(cjson.decode(file:read("*a")))
  file:close()
  dims, k, centroid_sq = meta.dims, meta.k, meta.centroid_sq
  width = dims + k
  error_types, lower_case = meta.error_types, meta.lower_case
  model_name, experts, max_inflight = meta.model_name, meta.experts, meta.max_inflight
  queue_timeout, fallback, max_attempts = meta.queue_timeout_s, meta.fallback == "nearest", meta.max_attempts
  slots = ngx.shared.expert_router
  by_model = {}
  for cluster, expert in pairs(experts) do by_model[expert.model] = tonumber(cluster) end
  vocabulary = {}
  local i = 0
  for term in io.lines(dir .. "/vocabulary.txt") do
    vocabulary[term] = i
    i = i + 1
  end
  file = assert(io.open(dir .. "/rows.f32", "rb"))
  local raw = file:read("*a")
  file:close()
  assert(#raw == i * width * 4, "rows.f32 does not match vocabulary.txt and router.json")
  rows = ffi.new("float[?]", i * width)
  ffi.copy(rows, raw, #raw)
  acc = ffi.new("double[?]", width)
end

--- An OpenAI-style error answer, and the end of the request.
local function fail(status, message, param, code, kind)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  if status == 405 then ngx.header["Allow"] = "POST" end
  ngx.print(cjson.encode({ error = { message = message, type = kind or error_types[tostring(status)] or "server_error",
    param = param or cjson.null, code = code or status } }))
  return ngx.exit(ngx.HTTP_OK)
end

--- A non-ASCII character lower-cased as Python's str.lower does it (LuaJIT's string.lower knows ASCII only).
local function fold(match)
  return lower_case[match[0]] or match[0]
end

--- Every cluster by its distance to the text's point, nearest first (ties to the lower cluster, as
--- `Classifier.rank`'s stable sort puts them).
local function rank(text)
  for j = 0, width - 1 do acc[j] = 0 end
  local words
  if find(text, "[\128-\255]") then
    local folded = ngx.re.gsub(lower(text), "[^\\x00-\\x7F]", fold, "jou") or lower(text) -- nil: not UTF-8
    words = ngx.re.gmatch(folded, [[(*UCP)\b\w\w+\b]], "jou")
  else
    words = gmatch(lower(text), "[%w_]+")
  end
  for word in words do
    if type(word) == "table" then word = word[0] end
    local i = vocabulary[word]
    if i then
      local base = i * width
      for j = 0, width - 1 do acc[j] = acc[j] + rows[base + j] end
    end
  end
  local norm_sq = 0
  for j = 0, dims - 1 do norm_sq = norm_sq + acc[j] * acc[j] end
  local factor = norm_sq > 0 and 2 / math.sqrt(norm_sq) or 0
  local order, distances = {}, {}
  for c = 0, k - 1 do
    local distance = centroid_sq[c + 1]
    if norm_sq > 0 then distance = distance - factor * acc[dims + c] + 1 end
    distances[c + 1] = distance
    local i = c -- insertion after every equal distance: stable
    while i > 0 and distances[order[i] + 1] > distance do
      order[i + 1] = order[i]
      i = i - 1
    end
    order[i + 1] = c
  end
  return order
end

local function joined(parts)
  local texts = {}
  for _, part in ipairs(parts) do
    if type(part) ~= "string" then return nil end
    texts[#texts + 1] = part
  end
  return table.concat(texts, "\n")
end

local function content_text(content)
  if content == nil or content == cjson.null then return "" end
  if type(content) == "string" then return content end
  if type(content) ~= "table" then return nil end
  local texts = {}
  for _, part in ipairs(content) do
    if type(part) ~= "table" or type(part.type) ~= "string" then return nil end
    if part.type == "text" then
      if type(part.text) ~= "string" then return nil end
      texts[#texts + 1] = part.text
    end
  end
  return table.concat(texts, "\n")
end

--- What the classifier reads, as the Python gateway's `requests` module picks it; or nil and why.
local function routed_text(body, chat)
  if chat then
    local messages = body.messages
    if type(messages) ~= "table" or #messages == 0 then return nil, "'messages' must be a non-empty list", "messages" end
    local users, all = {}, {}
    for i, message in ipairs(messages) do
      if type(message) ~= "table" then return nil, ("messages[%d] must be an object"):format(i - 1), "messages" end
      local text = content_text(message.content)
      if text == nil then
        return nil, ("messages[%d].content must be a string or a list of parts"):format(i - 1), "messages"
      end
      all[#all + 1] = text
      if message.role == "user" then users[#users + 1] = text end
    end
    local text = #users > 0 and table.concat(users, "\n") or table.concat(all, "\n")
    if not find(text, "%S") then return nil, "the messages hold no text to answer", "messages" end
    return text
  end
  local prompt = body.prompt
  if prompt == nil or prompt == cjson.null then return nil, "'prompt' is required", "prompt" end
  local text = type(prompt) == "string" and prompt or (type(prompt) == "table" and joined(prompt))
  if not text then return nil, "'prompt' must be a string or a list of strings", "prompt" end
  if not find(text, "%S") then return nil, "'prompt' is empty", "prompt" end
  return text
end

-- The raw body is kept as the client sent it but for the value of its top-level "model": decoded and
-- encoded again, cjson turns [] into {} and rounds integers past 14 digits (a "seed" among them).

local function string_end(raw, i)
  local j = i + 1
  while true do
    local q = find(raw, '["\\]', j)
    if not q then return nil end
    if byte(raw, q) == 92 then j = q + 2 else return q end
  end
end

local function value_end(raw, i)
  local b = byte(raw, i)
  if b == 34 then return string_end(raw, i) end
  if b == 123 or b == 91 then
    local depth, j, n = 0, i, #raw
    while j <= n do
      local c = byte(raw, j)
      if c == 34 then
        j = string_end(raw, j)
        if not j then return nil end
      elseif c == 123 or c == 91 then
        depth = depth + 1
      elseif c == 125 or c == 93 then
        depth = depth - 1
        if depth == 0 then return j end
      end
      j = j + 1
    end
    return nil
  end
  local _, e = find(raw, "^[^,}%]%s]+", i)
  return e
end

--- Where the value of the object's top-level "model" member starts and ends (nil when it has none).
local function model_value(raw)
  local i = find(raw, "{", 1, true) + 1
  while true do
    i = find(raw, "%S", i)
    if not i or byte(raw, i) ~= 34 then return nil end -- "}" (the end) or not a key
    local key_end = string_end(raw, i)
    local value = find(raw, "%S", find(raw, ":", key_end + 1, true) + 1)
    local stop = value_end(raw, value)
    if sub(raw, i, key_end) == '"model"' then return value, stop end
    i = find(raw, "%S", stop + 1)
    if not i or byte(raw, i) ~= 44 then return nil end -- no "," : the object's end
    i = i + 1
  end
end

--- `raw` naming `model`; nil when it has a "model" member written with escapes, which is not found.
local function with_model(raw, model, has_model)
  local start, stop = model_value(raw)
  local value = cjson.encode(model)
  if start then return sub(raw, 1, start - 1) .. value .. sub(raw, stop + 1) end
  if has_model then return nil end
  local open = find(raw, "{", 1, true)
  return sub(raw, 1, open) .. '"model":' .. value .. "," .. sub(raw, open + 1)
end

--- Take a slot of `cluster`'s expert (one count in the shared dict for all of this nginx's workers),
--- waiting up to `queue_timeout_s` when `wait` (the routed expert: back-pressure on the expert the
--- prompt belongs to) and not at all otherwise (a full fallback expert is passed over). The wait polls,
--- backing off from 1 to 50 ms: slots go to whichever waiting request looks first, not in arrival order.
local function admit(cluster, wait)
  local key = "inflight\t" .. cluster
  local waited, pause = 0, 0.001
  while true do
    local count = slots:incr(key, 1, 0)
    if not count then break end -- the dict is full (it holds a few keys per expert): admit, uncounted
    if count <= max_inflight then
      ngx.var.expert_admitted = cluster
      return true
    end
    slots:incr(key, -1)
    if not wait or waited >= queue_timeout then return false end
    local step = math.min(pause, queue_timeout - waited)
    ngx.sleep(step)
    waited, pause = waited + step, math.min(pause * 2, 0.05)
  end
  return true
end

--- Give back the slot this request holds, if any (at its end, or when it moves to another expert).
local function release()
  local held = ngx.var.expert_admitted
  if held ~= "" then
    slots:incr("inflight\t" .. held, -1)
    ngx.var.expert_admitted = ""
  end
end

--- Send the request to `cluster`'s expert: its model in the body, its upstream for proxy_pass.
local function send_to(cluster, raw, has_model)
  local expert = experts[tostring(cluster)]
  local rewritten = with_model(raw, expert.model, has_model)
  if not rewritten then return false end
  ngx.req.set_body_data(rewritten)
  ngx.var.expert_upstream = expert.upstream
  ngx.var.expert_cluster = cluster
  ngx.var.expert_model = expert.model
  return true
end

local function saturated(cluster)
  ngx.header["Retry-After"] = "1"
  return fail(429, ("expert %s already has %d requests in flight (max_inflight_per_expert) and none ended "
    .. "within %gs; try again shortly"):format(experts[tostring(cluster)].model, max_inflight, queue_timeout))
end

--- rewrite_by_lua: route one POST to /v1/completions or /v1/chat/completions, or answer its error.
--- The plan is the gateway's (`routing.Router.plan`): a classified prompt goes to the nearest expert,
--- and the other experts by distance are its fail-over order (none with `fallback: none`); a request
--- naming an expert's model goes to that expert only.
function M.route(chat)
  if ngx.req.get_method() ~= "POST" then return fail(405, "method not allowed; use POST") end
  local encoding = ngx.var.http_content_encoding
  if encoding and encoding ~= "identity" then
    return fail(415, "the nginx router reads plain request bodies only (Content-Encoding: " .. encoding .. ")")
  end
  ngx.req.read_body()
  local raw = ngx.req.get_body_data()
  if not raw then
    if ngx.req.get_body_file() then return fail(413, "request body too large") end
    return fail(400, "the request body is empty: send a JSON object")
  end
  local body = cjson.decode(raw)
  if type(body) ~= "table" or byte(raw, find(raw, "%S")) ~= 123 then
    return fail(400, "the request body is not a JSON object")
  end
  local model = body.model
  if model ~= nil and model ~= cjson.null and type(model) ~= "string" then
    return fail(400, "'model' must be a string", "model")
  end
  if body.stream ~= nil and body.stream ~= cjson.null and type(body.stream) ~= "boolean" then
    return fail(400, "'stream' must be a boolean", "stream")
  end
  local text, why, param = routed_text(body, chat)
  if not text then return fail(400, why, param) end
  local routed, order
  if model == nil or model == cjson.null or model == model_name then
    local ranked = rank(text)
    routed, order = ranked[1], {}
    for i, cluster in ipairs(ranked) do
      if experts[tostring(cluster)] and (i == 1 or fallback) then order[#order + 1] = cluster end
    end
  else
    routed = by_model[model]
    if routed == nil then
      return fail(404, ("The model `%s` does not exist; this router serves %s and its experts"):format(
        model, model_name), "model", "model_not_found")
    end
    order = { routed }
  end
  ngx.var.expert_routed = routed
  -- Only the routed expert's own queue answers 429; a full fallback expert is passed over.
  for i, cluster in ipairs(order) do
    if admit(cluster, cluster == routed) then
      ngx.var.expert_order = table.concat(order, ",", i + 1)
      if not send_to(cluster, raw, model ~= nil) then
        release()
        return fail(400, "write the 'model' key without escapes", "model")
      end
      return
    end
    if cluster == routed then return saturated(cluster) end
  end
  if #order == 0 then
    return fail(503, ("no expert could take the request: cluster %d has no expert"):format(routed), nil, nil,
      "service_unavailable")
  end
  return saturated(order[1])
end

--- How many upstream servers this request has tried: $upstream_addr lists them, ", " between tries of
--- one proxy_pass and " : " between the proxy_passes of an internal redirect.
local function tries()
  local addresses = ngx.var.upstream_addr
  if not addresses or addresses == "" then return 0 end
  local count = 1
  for _ in gmatch(addresses, " [,:] ") do count = count + 1 end
  return count
end

--- rewrite_by_lua of @fallback, where error_page sends a request whose expert failed before its first
--- byte (every replica tried, refused, timed out or answered 5xx): the next expert of its order that has
--- a free slot, while `max_attempts` upstream tries remain; or 503 (429 when the rest were full).
function M.fall_back()
  local failed = ngx.var.expert_cluster
  release()
  if failed == "" then -- not an expert's failure: the router's own (a Lua error is a 500)
    return fail(500, "internal error in the nginx router; see its error.log")
  end
  local notes = { ("cluster %s failed (%s)"):format(failed, ngx.var.upstream_status or "no answer") }
  local full = false
  local rest = ngx.var.expert_order
  if tries() < max_attempts then
    local order = {}
    for cluster in gmatch(rest, "%d+") do order[#order + 1] = tonumber(cluster) end
    for i, cluster in ipairs(order) do
      if admit(cluster, false) then
        ngx.var.expert_order = table.concat(order, ",", i + 1)
        ngx.req.read_body()
        if send_to(cluster, ngx.req.get_body_data(), true) then return end
        release()
      else
        full = true
        notes[#notes + 1] = ("cluster %d is full"):format(cluster)
      end
    end
  end
  ngx.var.expert_cluster = ""
  ngx.header["Retry-After"] = "1"
  if full then
    return fail(429, "every expert left to try is full: " .. table.concat(notes, "; "))
  end
  return fail(503, "no expert could take the request: " .. table.concat(notes, "; "), nil, nil, "service_unavailable")
end

--- log_by_lua of the routing locations: give the slot back, count the answer (a client that hung up
--- is 499, as in the gateway's metrics).
function M.done()
  release()
  local cluster = ngx.status < 400 and ngx.var.expert_cluster or ""
  local endpoint = ngx.var.uri == "/v1/chat/completions" and "chat" or "completions"
  slots:incr(("requests\t%s\t%s\t%d"):format(endpoint, cluster, ngx.status), 1, 0)
  if cluster ~= "" and cluster ~= ngx.var.expert_routed then
    slots:incr(("fallbacks\t%s\t%s"):format(ngx.var.expert_routed, cluster), 1, 0)
  end
end

local METRICS = {
  requests = { "expert_router_requests_total", "counter", "Requests answered, by endpoint, the cluster "
    .. "whose expert answered (empty when none did) and HTTP status", { "endpoint", "cluster", "status" } },
  fallbacks = { "expert_router_fallbacks_total", "counter", "Requests answered by another cluster's "
    .. "expert than the classifier chose", { "from_cluster", "to_cluster" } },
  inflight = { "expert_router_inflight", "gauge", "Requests in flight per cluster", { "cluster" } },
}

--- content_by_lua for GET /metrics: the counts of every worker, in Prometheus' text format (the
--- gateway's names and labels).
function M.metrics()
  local lines, seen = {}, {}
  local keys = slots:get_keys(0)
  table.sort(keys)
  for _, key in ipairs(keys) do
    local parts = {}
    for part in gmatch(key .. "\t", "([^\t]*)\t") do parts[#parts + 1] = part end
    local metric = METRICS[parts[1]]
    if metric then
      local name, kind, help, labels = metric[1], metric[2], metric[3], metric[4]
      if not seen[name] then
        seen[name] = true
        lines[#lines + 1] = ("# HELP %s %s\n# TYPE %s %s"):format(name, help, name, kind)
      end
      local pairs_ = {}
      for i, label in ipairs(labels) do pairs_[i] = ('%s="%s"'):format(label, parts[i + 1]) end
      lines[#lines + 1] = ("%s{%s} %d"):format(name, table.concat(pairs_, ","), slots:get(key) or 0)
    end
  end
  ngx.header["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
  ngx.print(table.concat(lines, "\n"), "\n")
end

--- content_by_lua for GET /v1/models: the router's own name and every expert's model.
function M.models()
  if ngx.req.get_method() ~= "GET" then return fail(405, "method not allowed; use GET") end
  local data = { { id = model_name, object = "model", created = ngx.time(), owned_by = "expert-router" } }
  local clusters = {}
  for cluster in pairs(experts) do clusters[#clusters + 1] = tonumber(cluster) end
  table.sort(clusters)
  for _, cluster in ipairs(clusters) do
    data[#data + 1] = { id = experts[tostring(cluster)].model, object = "model", created = ngx.time(),
      owned_by = "expert-router" }
  end
  ngx.header["Content-Type"] = "application/json"
  ngx.print(cjson.encode({ object = "list", data = data }))
end

--- content_by_lua for any other path.
function M.not_found()
  return fail(404, ("no route for %s %s"):format(ngx.req.get_method(), ngx.var.uri))
end

M.rank = rank
M.with_model = with_model
return M
