-- The gateway's routing decision inside nginx (lua-nginx-module, LuaJIT): read the body, classify the
-- prompt with the exported classifier, name the expert's model in the body, and let nginx relay the
-- stream from the expert's upstream. Written by `expert-router nginx-router`; see its module docstring
-- (expert_router/nginx/__init__.py) for what it does and does not do.
--
-- The classifier is the Python gateway's l2 fast path (`Classifier._distances_one_l2`): the rows of a
-- prompt's vocabulary terms (each row its idf-weighted SVD projection and its k centroid products) are
-- summed, and |r - c|^2 = |c|^2 - 2 r.c / |r| + 1. Tokens: lower-case, maximal runs of [A-Za-z0-9_]
-- for ASCII text (as `ascii_word_tokens`), PCRE's Unicode \w\w+ otherwise (non-ASCII capitals
-- lower-cased with the table of Python's str.lower that `expert-router nginx-router` writes, and a
-- word-final capital sigma as 'ς', as str.lower's context rule has it).

local cjson = require "cjson.safe"
local ffi = require "ffi"
local counts = require "counts"
local decode = require "decode"
local limits = require "limits"
local replicas = require "replicas"

local byte, find, sub, lower, gmatch = string.byte, string.find, string.sub, string.lower, string.gmatch
local band, bxor, rshift, tobit = bit.band, bit.bxor, bit.rshift, bit.tobit

local M = {}
local vocabulary, rows, width, dims, k, centroid_sq, acc
local word_byte, term_slots, slot_mask, term_bytes, term_start, term_length -- the ASCII path's own look-up
local model_name, experts, by_model, max_inflight, queue_timeout, fallback, max_attempts, max_body
local slots -- ngx.shared.expert_router: requests in flight per expert, and the counts /metrics serves

local lower_case -- every non-ASCII character that Python's str.lower changes -> what it makes of it
local error_types -- status (a string) -> OpenAI error type: the gateway's own table (`http.ERROR_TYPES`)
local chat_roles, roles_said -- role -> true: the gateway's `api_request.CHAT_ROLES`; and as its message lists them

-- ASCII prompts (most) are tokenized and looked up without making a Lua string per word: the bytes
-- are read through the FFI, each word hashed as it is read, and found in an open-addressing table of
-- the vocabulary's ASCII terms. string.gmatch made and interned a string per word, and LuaJIT does not
-- compile it. On the demo's prompts (~42 words) `rank` went from 7.5 to 5.7 us a prompt in a loop,
-- 11 to 8 with the CPU's L2 cache emptied before each and 35 to 26 with every cache emptied; the
-- router's CPU a request ~6% less (docs/gateway-performance.md, the fourteenth pass).

--- Add the row of vocabulary term `row` (0-based) to `acc`.
local function add_row(row)
  local base = row * width
  for j = 0, width - 1 do acc[j] = acc[j] + rows[base + j] end
end

--- A word's hash, one byte at a time (LuaJIT inlines it, and `slot_of`, into the compiled rank loop).
local function hash_step(h, b)
  return tobit(h * 31 + b)
end

local function slot_of(h)
  return band(bxor(h, rshift(h, 15)), slot_mask)
end

--- Fill the ASCII path's tables from `vocabulary` (`count` terms); terms with other bytes are left to
--- the Unicode path, which looks words up in `vocabulary` itself.
local function index_ascii_terms(count)
  word_byte = ffi.new("uint8_t[256]") -- a word byte ([A-Za-z0-9_]) -> its lower case; any other -> 0
  for b = 0, 255 do
    local c = string.char(b)
    if find(c, "[%w_]") then word_byte[b] = byte(lower(c)) end
  end
  local size = 1
  while size < 2 * count do size = size * 2 end
  slot_mask = size - 1
  term_slots = ffi.new("int32_t[?]", size) -- 0: empty; else the term's row + 1
  term_start = ffi.new("int32_t[?]", count)
  term_length = ffi.new("int32_t[?]", count)
  local total = 0
  for term in pairs(vocabulary) do total = total + #term end
  term_bytes = ffi.new("uint8_t[?]", total + 1)
  local offset = 0
  for term, row in pairs(vocabulary) do
    if not find(term, "[^%w_]") then
      local h = 0
      for j = 1, #term do h = hash_step(h, byte(term, j)) end
      local slot = slot_of(h)
      while term_slots[slot] ~= 0 do slot = band(slot + 1, slot_mask) end
      term_slots[slot] = row + 1
      term_start[row], term_length[row] = offset, #term
      ffi.copy(term_bytes + offset, term, #term)
      offset = offset + #term
    end
  end
end

--- Add the rows of every vocabulary term among an ASCII text's words to `acc` (the words: maximal runs
--- of [A-Za-z0-9_], lower-cased, as `ascii_word_tokens` reads them).
local function sum_ascii_words(text)
  local p, n, i = ffi.cast("const uint8_t *", text), #text, 0
  while i < n do
    local b = word_byte[p[i]]
    if b ~= 0 then
      local start, h = i, 0
      repeat -- a Lua string ends with a 0 byte, which is no word byte: p[n] stops the run
        h = hash_step(h, b)
        i = i + 1
        b = word_byte[p[i]]
      until b == 0
      local length, slot = i - start, slot_of(h)
      while true do
        local row = term_slots[slot] - 1
        if row < 0 then break end
        if term_length[row] == length then
          local at, j = term_start[row], 0
          while j < length and term_bytes[at + j] == word_byte[p[start + j]] do j = j + 1 end
          if j == length then
            add_row(row)
            break
          end
        end
        slot = band(slot + 1, slot_mask)
      end
    end
    i = i + 1
  end
end

--- Load what `expert-router nginx-router` wrote into `dir` (once, in init_by_lua: shared by every worker).
function M.load(dir)
  local file = assert(io.open(dir .. "/router.json", "rb"))
  local meta = assert(cjson.decode(file:read("*a")))
  file:close()
  dims, k, centroid_sq = meta.dims, meta.k, meta.centroid_sq
  width = dims + k
  error_types, lower_case = meta.error_types, meta.lower_case
  chat_roles, roles_said = {}, "['" .. table.concat(meta.chat_roles, "', '") .. "']"
  for _, role in ipairs(meta.chat_roles) do chat_roles[role] = true end
  model_name, experts, max_inflight = meta.model_name, meta.experts, meta.max_inflight
  queue_timeout, fallback, max_attempts = meta.queue_timeout_s, meta.fallback == "nearest", meta.max_attempts
  max_body = meta.max_body_bytes
  slots = ngx.shared.expert_router
  counts.load(slots)
  limits.load(meta, slots)
  replicas.load(meta, slots)
  by_model = {}
  for cluster, expert in pairs(experts) do by_model[expert.model] = tonumber(cluster) end
  vocabulary = {}
  local i = 0
  for term in io.lines(dir .. "/vocabulary.txt") do
    vocabulary[term] = i
    i = i + 1
  end
  index_ascii_terms(i)
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
  ngx.print(cjson.encode({ error = { message = message, type = kind or error_types[tostring(status)] or "server_error",
    param = param or cjson.null, code = code or status } }))
  return ngx.exit(ngx.HTTP_OK)
end

--- A 405 naming the methods `allow` lists ("POST", "GET, HEAD"), the first in the message.
local function not_allowed(allow)
  ngx.header["Allow"] = allow
  return fail(405, "method not allowed; use " .. allow:match("^%u+"))
end

--- A non-ASCII character lower-cased as Python's str.lower does it (LuaJIT's string.lower knows ASCII only).
local function fold(match)
  return lower_case[match[0]] or match[0]
end

-- str.lower's one context rule: a capital sigma after a cased letter and not before one is final, 'ς'
-- (Python also looks past case-ignorable characters, such as combining accents, on either side).
local FINAL_SIGMA_BYTES = "\206\163" -- Σ in UTF-8
local FINAL_SIGMA = [[(?<=[\p{Lu}\p{Ll}\p{Lt}])Σ(?![\p{Lu}\p{Ll}\p{Lt}])]]

--- Every cluster by its distance to the text's point, nearest first (ties to the lower cluster, as
--- `Classifier.rank`'s stable sort puts them).
local function rank(text)
  for j = 0, width - 1 do acc[j] = 0 end
  if find(text, "[\128-\255]") then
    if find(text, FINAL_SIGMA_BYTES, 1, true) then text = ngx.re.gsub(text, FINAL_SIGMA, "ς", "jou") or text end
    local folded = ngx.re.gsub(lower(text), "[^\\x00-\\x7F]", fold, "jou") or lower(text) -- nil: not UTF-8
    for word in ngx.re.gmatch(folded, [[(*UCP)\b\w\w+\b]], "jou") do
      local row = vocabulary[word[0]]
      if row then add_row(row) end
    end
  else
    sum_ascii_words(text)
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
      if not chat_roles[message.role] then
        return nil, ("messages[%d].role must be one of %s"):format(i - 1, roles_said), "messages"
      end
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
--- The last one, where a body repeats the key: cjson routed on the last, and the expert reads the last,
--- so a rewrite of the first went upstream unseen (404 for the router's own name).
local function model_value(raw)
  local i, start, stop = find(raw, "{", 1, true) + 1, nil, nil
  while true do
    i = find(raw, "%S", i)
    if not i or byte(raw, i) ~= 34 then return start, stop end -- "}" (the end) or not a key
    local key_end = string_end(raw, i)
    local value = find(raw, "%S", find(raw, ":", key_end + 1, true) + 1)
    local value_stop = value_end(raw, value)
    if sub(raw, i, key_end) == '"model"' then start, stop = value, value_stop end
    i = find(raw, "%S", value_stop + 1)
    if not i or byte(raw, i) ~= 44 then return start, stop end -- no "," : the object's end
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

--- Send the request to `replica` of `cluster`'s expert: the expert's model in the body, the replica's
--- upstream for proxy_pass.
local function send_to(cluster, replica, raw, has_model)
  local expert = experts[tostring(cluster)]
  local rewritten = with_model(raw, expert.model, has_model)
  if not rewritten then return false end
  ngx.req.set_body_data(rewritten)
  ngx.var.expert_upstream = replica
  ngx.var.expert_cluster = cluster
  ngx.var.expert_model = expert.model
  ngx.var.expert_replica = replica
  local tried = ngx.var.expert_tried
  ngx.var.expert_tried = tried == "" and replica or tried .. "," .. replica
  replicas.sent(replica)
  return true
end

local function saturated(cluster)
  ngx.header["Retry-After"] = "1"
  return fail(429, ("expert %s already has %d requests in flight (max_inflight_per_expert) and none ended "
    .. "within %gs; try again shortly"):format(experts[tostring(cluster)].model, max_inflight, queue_timeout))
end

local send -- below M.route, which ends in it

--- rewrite_by_lua: route one POST to /v1/completions or /v1/chat/completions, or answer its error.
--- The plan is the gateway's (`routing.Router.plan`): a classified prompt goes to the nearest expert,
--- and the other experts by distance are its fail-over order (none with `fallback: none`); a request
--- naming an expert's model goes to that expert only.
function M.route(chat)
  if ngx.req.get_method() ~= "POST" then return not_allowed("POST") end
  ngx.req.read_body()
  local raw = ngx.req.get_body_data()
  if not raw then
    if ngx.req.get_body_file() then return fail(413, "request body too large") end
    return fail(400, "the request body is empty: send a JSON object")
  end
  local encoding = ngx.var.http_content_encoding
  if encoding then -- decoded here: the expert gets the plain body, which names its model
    local decoded, status, why = decode.body(raw, encoding, max_body)
    if not decoded then return fail(status, why) end
    raw = decoded
    ngx.req.clear_header("Content-Encoding")
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
  return send(order, routed, raw, model ~= nil, {}, 0, {})
end

--- Send to the first expert of `order` that has a live replica not tried yet and a free slot (waiting
--- for the routed expert's, as only its queue answers 429; a full fallback expert is passed over), while
--- fewer than `max_attempts` replicas have been tried; else 429 when one was full, 503 when none could.
send = function(order, routed, raw, has_model, tried, count, notes)
  local full = false
  for i, cluster in ipairs(order) do
    if count >= max_attempts then break end
    local admitted, err
    if replicas.pick(cluster, tried) then admitted, err = limits.admit(cluster, cluster == routed) end
    if admitted == nil and err then
      ngx.header["Retry-After"] = "1" -- admitting anyway would break the limit the store exists for
      return fail(503, err, nil, nil, "service_unavailable")
    elseif admitted == nil then
      notes[#notes + 1] = ("cluster %d has no live replica"):format(cluster)
    elseif admitted then
      local replica = replicas.pick(cluster, tried) -- again: the wait may have been long
      if replica then
        ngx.var.expert_order = table.concat(order, ",", i + 1)
        if send_to(cluster, replica, raw, has_model) then return end
        limits.release()
        return fail(400, "write the 'model' key without escapes", "model")
      end
      limits.release()
      notes[#notes + 1] = ("cluster %d's replicas went down while the request waited"):format(cluster)
    elseif cluster == routed then
      return saturated(cluster)
    else
      full = true
      notes[#notes + 1] = ("cluster %d is full"):format(cluster)
    end
  end
  ngx.var.expert_cluster = ""
  ngx.header["Retry-After"] = "1"
  if full then return fail(429, "every expert left to try is full: " .. table.concat(notes, "; ")) end
  if #order == 0 then notes[1] = ("cluster %d has no expert"):format(routed) end
  return fail(503, "no expert could take the request: " .. table.concat(notes, "; "), nil, nil, "service_unavailable")
end

--- rewrite_by_lua of @fallback, where error_page sends a request whose replica failed before its first
--- byte (refused, timed out or answered 5xx): another live replica of the same expert, then the next
--- experts of its order, while fewer than `max_attempts` replicas have been tried.
function M.fall_back()
  local cluster, replica = ngx.var.expert_cluster, ngx.var.expert_replica
  if cluster == "" or replica == "" then -- not a replica's failure: the router's own (a Lua error is a 500)
    limits.release()
    return fail(500, "internal error in the nginx router; see its error.log")
  end
  local why = ngx.var.upstream_status or "no answer"
  replicas.failed(replica, why)
  replicas.let_go()
  local tried, count = replicas.tried()
  local notes = { ("%s failed (%s)"):format(replicas.url(replica), why) }
  ngx.req.read_body()
  local raw = ngx.req.get_body_data()
  cluster = tonumber(cluster)
  local other = count < max_attempts and replicas.pick(cluster, tried)
  if other and send_to(cluster, other, raw, true) then return end
  limits.release()
  notes[#notes + 1] = ("cluster %d failed"):format(cluster)
  local order = {}
  for next_cluster in gmatch(ngx.var.expert_order, "%d+") do order[#order + 1] = tonumber(next_cluster) end
  return send(order, tonumber(ngx.var.expert_routed), raw, true, tried, count, notes)
end

--- log_by_lua of the routing locations: give the slot back, count the answer (a client that hung up
--- is 499, as in the gateway's metrics).
function M.done()
  -- A slot is left pending only by a request ended while it waited or asked the store: its client left
  -- (499) or the Lua failed (500). Only those read ngx.ctx, which makes a table for every request that reads it.
  local status = ngx.status
  if status == 499 or status >= 500 then limits.abandon() end
  limits.release()
  local replica = ngx.var.expert_replica
  if replica ~= "" then
    replicas.let_go()
    if ngx.status < 500 and ngx.status ~= 499 then replicas.answered(replica) end -- 499: the client left
  end
  local cluster = ngx.status < 500 and ngx.var.expert_cluster or "" -- an expert's 4xx is its answer
  local endpoint = ngx.var.uri == "/v1/chat/completions" and "chat" or "completions"
  slots:incr(("requests\t%s\t%s\t%d"):format(endpoint, cluster, ngx.status), 1, 0)
  if cluster ~= "" and cluster ~= ngx.var.expert_routed then
    slots:incr(("fallbacks\t%s\t%s"):format(ngx.var.expert_routed, cluster), 1, 0)
  end
end

--- init_worker_by_lua: the replicas' load reads and health checks (worker 0), and every worker's renewal of
--- its leases.
function M.start_worker()
  counts.start_worker()
  replicas.start_worker()
  limits.start_worker()
end

--- GET or HEAD: what the read-only endpoints answer (a PUT or DELETE on /health was answered 200).
local function read_only()
  local method = ngx.req.get_method()
  return method == "GET" or method == "HEAD"
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
  if not read_only() then return not_allowed("GET, HEAD") end
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

--- The clusters that have an expert, in order.
local function clusters()
  local found = {}
  for cluster in pairs(experts) do found[#found + 1] = tonumber(cluster) end
  table.sort(found)
  return found
end

--- content_by_lua for GET /health: the gateway's answer (each expert's live replicas and this nginx's
--- requests in flight on it); 503 when no expert has a live replica, so a load balancer or a readiness
--- probe passes this router over.
function M.health()
  if not read_only() then return not_allowed("GET, HEAD") end
  local status, by_cluster = "unavailable", {}
  for _, cluster in ipairs(clusters()) do
    local live, all = replicas.healthy(cluster)
    if live > 0 then status = "ok" end
    by_cluster[tostring(cluster)] = { model = experts[tostring(cluster)].model, healthy_replicas = live,
      replicas = all, inflight = slots:get("inflight\t" .. cluster) or 0 }
  end
  ngx.status = status == "ok" and 200 or 503
  ngx.header["Content-Type"] = "application/json"
  ngx.print(cjson.encode({ status = status, experts = by_cluster }))
end

--- content_by_lua for GET /v1/models: the router's own name and every expert's model.
function M.models()
  if not read_only() then return not_allowed("GET, HEAD") end
  local data = { { id = model_name, object = "model", created = ngx.time(), owned_by = "expert-router" } }
  for _, cluster in ipairs(clusters()) do
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
