-- The gateway's routing decision inside nginx (lua-nginx-module, LuaJIT): read the body, classify the
-- prompt with the exported classifier, name the expert's model in the body, and let nginx relay the
-- stream from the expert's upstream. Written by `expert-router nginx-router`; see its module docstring
-- (expert_router/nginx/__init__.py) for what it does and does not do.
--
-- The classifier is the Python gateway's l2 fast path (`Classifier._distances_one_l2`): the rows of a
-- prompt's vocabulary terms (each row its idf-weighted SVD projection and its k centroid products) are
-- summed, and |r - c|^2 = |c|^2 - 2 r.c / |r| + 1. Tokens: lower-case, maximal runs of [A-Za-z0-9_]
-- for ASCII text (as `ascii_word_tokens`), PCRE's Unicode \w\w+ otherwise (non-ASCII capitals are not
-- lower-cased: LuaJIT's string.lower knows ASCII only).

local cjson = require "cjson.safe"
local ffi = require "ffi"

local byte, find, sub, lower, gmatch = string.byte, string.find, string.sub, string.lower, string.gmatch

local M = {}
local vocabulary, rows, width, dims, k, centroid_sq, acc
local model_name, experts, by_model, max_inflight

local TYPES = { [400] = "invalid_request_error", [404] = "invalid_request_error", [405] = "invalid_request_error",
  [413] = "invalid_request_error", [415] = "invalid_request_error", [429] = "rate_limit_error",
  [500] = "server_error", [503] = "server_error" }

--- Load what `expert-router nginx-router` wrote into `dir` (once, in init_by_lua: shared by every worker).
function M.load(dir)
  local file = assert(io.open(dir .. "/router.json", "rb"))
  local meta = assert(cjson.decode(file:read("*a")))
  file:close()
  dims, k, centroid_sq = meta.dims, meta.k, meta.centroid_sq
  width = dims + k
  model_name, experts, max_inflight = meta.model_name, meta.experts, meta.max_inflight
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
local function fail(status, message, param, code)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  if status == 405 then ngx.header["Allow"] = "POST" end
  ngx.print(cjson.encode({ error = { message = message, type = TYPES[status] or "invalid_request_error",
    param = param or cjson.null, code = code or status } }))
  return ngx.exit(ngx.HTTP_OK)
end

--- The nearest cluster (ties to the lower one, as `Classifier.rank`'s stable sort puts first).
local function nearest(text)
  for j = 0, width - 1 do acc[j] = 0 end
  local words
  if find(text, "[\128-\255]") then
    words = ngx.re.gmatch(lower(text), [[(*UCP)\b\w\w+\b]], "jou")
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
  local best, best_distance = 0, math.huge
  for c = 0, k - 1 do
    local distance = centroid_sq[c + 1]
    if norm_sq > 0 then distance = distance - factor * acc[dims + c] + 1 end
    if distance < best_distance then best, best_distance = c, distance end
  end
  return best
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

--- rewrite_by_lua: route one POST to /v1/completions or /v1/chat/completions, or answer its error.
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
  local cluster
  if model == nil or model == cjson.null or model == model_name then
    cluster = nearest(text)
  else
    cluster = by_model[model]
    if cluster == nil then
      return fail(404, ("The model `%s` does not exist; this router serves %s and its experts"):format(
        model, model_name), "model", "model_not_found")
    end
  end
  local expert = experts[tostring(cluster)]
  if expert == nil then return fail(503, ("cluster %d has no expert"):format(cluster)) end
  local rewritten = with_model(raw, expert.model, model ~= nil)
  if not rewritten then return fail(400, "write the 'model' key without escapes", "model") end
  ngx.req.set_body_data(rewritten)
  ngx.var.expert_upstream = expert.upstream
  ngx.var.expert_cluster = cluster
  ngx.var.expert_model = expert.model
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

--- content_by_lua for @saturated: the expert already has max_inflight_per_expert requests in flight.
function M.saturated()
  ngx.header["Retry-After"] = "1"
  return fail(429, ("expert %s already has %d requests in flight (max_inflight_per_expert); try again shortly"):format(
    ngx.var.expert_model, max_inflight))
end

--- content_by_lua for any other path.
function M.not_found()
  return fail(404, ("no route for %s %s"):format(ngx.req.get_method(), ngx.var.uri))
end

M.nearest = nearest
M.with_model = with_model
return M
