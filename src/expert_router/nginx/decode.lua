-- Request bodies' Content-Encoding, decoded inside nginx as the gateway decodes them
-- (expert_router/encoding.py): gzip (members one after another), deflate (zlib-wrapped, or raw as some
-- clients send it), br and zstd, through LuaJIT's FFI to the system's zlib, libbrotlidec and libzstd
-- (a coding whose library this machine lacks is refused with 415, as one never offered is). Decoding
-- stops one byte past the body limit: a small compressed body can expand a thousandfold. Every
-- failure is the client's: 415 for a coding not decoded here, 400 for bytes that do not decode, 413
-- for a body past the limit once decoded.

local ffi = require "ffi"

local M = {}

local MAX_CODINGS = 5 -- as the gateway: each coding is a pass over the body, and a header can list thousands

ffi.cdef [[
typedef struct {
  const unsigned char *next_in; unsigned int avail_in; unsigned long total_in;
  unsigned char *next_out; unsigned int avail_out; unsigned long total_out;
  const char *msg; void *state; void *zalloc; void *zfree; void *opaque;
  int data_type; unsigned long adler; unsigned long reserved;
} expert_router_z_stream;
const char *zlibVersion(void);
int inflateInit2_(expert_router_z_stream *strm, int windowBits, const char *version, int stream_size);
int inflate(expert_router_z_stream *strm, int flush);
int inflateEnd(expert_router_z_stream *strm);

typedef struct BrotliDecoderStateStruct BrotliDecoderState;
BrotliDecoderState *BrotliDecoderCreateInstance(void *alloc, void *free, void *opaque);
void BrotliDecoderDestroyInstance(BrotliDecoderState *state);
int BrotliDecoderDecompressStream(BrotliDecoderState *state, size_t *available_in, const uint8_t **next_in,
                                  size_t *available_out, uint8_t **next_out, size_t *total_out);

typedef struct ZSTD_DCtx_s ZSTD_DCtx;
typedef struct { const void *src; size_t size; size_t pos; } expert_router_zstd_in;
typedef struct { void *dst; size_t size; size_t pos; } expert_router_zstd_out;
ZSTD_DCtx *ZSTD_createDCtx(void);
size_t ZSTD_freeDCtx(ZSTD_DCtx *dctx);
size_t ZSTD_decompressStream(ZSTD_DCtx *dctx, expert_router_zstd_out *output, expert_router_zstd_in *input);
unsigned ZSTD_isError(size_t code);
]]

--- The first of `names` that loads, or nil: a library this machine lacks leaves its codings out.
local function library(names)
  for _, name in ipairs(names) do
    local ok, lib = pcall(ffi.load, name)
    if ok then return lib end
  end
  return nil
end

local zlib = library({ "z", "libz.so.1" })
local brotli = library({ "brotlidec", "libbrotlidec.so.1" })
local zstd = library({ "zstd", "libzstd.so.1" })

local Z_OK, Z_STREAM_END = 0, 1
local BROTLI_SUCCESS, BROTLI_NEEDS_MORE_OUTPUT = 1, 3

local out, out_size -- one buffer per worker, grown to the limit + 1: decoding never yields, so it is never shared

local function buffer(limit)
  if not out or out_size < limit + 1 then
    out, out_size = ffi.new("uint8_t[?]", limit + 1), limit + 1
  end
  return out
end

local MAX_MEMBERS = 64 -- gzip members or zstd frames a body may hold: `encoding.MAX_MEMBERS`, which says why

--- zlib's inflate over `input`: one stream, or with `members` as many as follow one another (gzip's).
--- Returns the decoded bytes (at most limit + 1 of them), or nil where the bytes do not decode.
local function inflate(input, wbits, members, limit)
  local dst = buffer(limit)
  local stream = ffi.new("expert_router_z_stream")
  local src = ffi.cast("const unsigned char *", input)
  local length, used, made = #input, 0, 0
  for _ = 1, MAX_MEMBERS do
    stream.next_in, stream.avail_in = src + used, length - used -- set before the init, as zlib.h asks
    stream.next_out, stream.avail_out = dst + made, limit + 1 - made
    if zlib.inflateInit2_(stream, wbits, zlib.zlibVersion(), ffi.sizeof(stream)) ~= Z_OK then return nil end
    local rc = zlib.inflate(stream, 0)
    while rc == Z_OK and stream.avail_in > 0 and stream.avail_out > 0 do rc = zlib.inflate(stream, 0) end
    made = limit + 1 - tonumber(stream.avail_out)
    used = length - tonumber(stream.avail_in)
    zlib.inflateEnd(stream)
    if made > limit then return ffi.string(dst, made) end
    if rc ~= Z_STREAM_END then return nil end -- corrupt or truncated
    if not members or used >= length then return ffi.string(dst, made) end
  end
  return nil
end

local function gzip(input, limit)
  return inflate(input, 16 + 15, true, limit)
end

local function deflate(input, limit)
  return inflate(input, 15, false, limit) or inflate(input, -15, false, limit)
end

local function br(input, limit)
  local dst = buffer(limit)
  local state = brotli.BrotliDecoderCreateInstance(nil, nil, nil)
  if state == nil then return nil end
  local available_in, next_in = ffi.new("size_t[1]", #input), ffi.new("const uint8_t *[1]")
  local available_out, next_out = ffi.new("size_t[1]", limit + 1), ffi.new("uint8_t *[1]")
  next_in[0], next_out[0] = ffi.cast("const uint8_t *", input), dst
  local rc = brotli.BrotliDecoderDecompressStream(state, available_in, next_in, available_out, next_out, nil)
  brotli.BrotliDecoderDestroyInstance(state)
  local made = limit + 1 - tonumber(available_out[0])
  if rc == BROTLI_NEEDS_MORE_OUTPUT or made > limit then return ffi.string(dst, limit + 1) end
  if rc ~= BROTLI_SUCCESS or tonumber(available_in[0]) ~= 0 then return nil end -- corrupt, truncated, or bytes after the end
  return ffi.string(dst, made)
end

local function zstd_frames(input, limit)
  local dst = buffer(limit)
  local context = zstd.ZSTD_createDCtx()
  if context == nil then return nil end
  local from = ffi.new("expert_router_zstd_in", ffi.cast("const char *", input), #input, 0)
  local into = ffi.new("expert_router_zstd_out", dst, limit + 1, 0)
  local rc, frames = 0, 0
  while from.pos < from.size and into.pos < into.size do -- every frame, one after another
    local pos_in, pos_out = tonumber(from.pos), tonumber(into.pos)
    rc = zstd.ZSTD_decompressStream(context, into, from)
    if rc == 0 then frames = frames + 1 end -- a frame ended
    if zstd.ZSTD_isError(rc) ~= 0 or (tonumber(from.pos) == pos_in and tonumber(into.pos) == pos_out)
      or frames > MAX_MEMBERS then
      zstd.ZSTD_freeDCtx(context)
      return nil
    end
  end
  zstd.ZSTD_freeDCtx(context)
  local made = tonumber(into.pos)
  if made > limit then return ffi.string(dst, made) end
  if tonumber(rc) ~= 0 then return nil end -- the last frame is not whole
  return ffi.string(dst, made)
end

local decoders = {} -- coding -> decoder(input, limit), for those whose library loaded
if zlib then decoders.gzip, decoders["x-gzip"], decoders.deflate = gzip, gzip, deflate end
if brotli then decoders.br = br end
if zstd then decoders.zstd = zstd_frames end

local offered = { "identity" }
for coding in pairs(decoders) do offered[#offered + 1] = coding end
table.sort(offered)
offered = table.concat(offered, ", ")

--- `raw` decoded from the codings `header` lists (applied in order, so undone last first), or nil, the
--- status and why: 415, 400 or 413.
function M.body(raw, header, limit)
  local codings = {}
  for coding in header:gmatch("[^,]+") do
    coding = coding:match("^%s*(.-)%s*$"):lower()
    if coding ~= "" then
      if #codings == MAX_CODINGS then
        return nil, 400, ("Content-Encoding lists more than %d codings; at most %d are decoded"):format(
          MAX_CODINGS, MAX_CODINGS)
      end
      codings[#codings + 1] = coding
    end
  end
  for _, coding in ipairs(codings) do
    if coding ~= "identity" and not decoders[coding] then
      return nil, 415, ("Content-Encoding '%s' is not supported; use one of %s"):format(coding, offered)
    end
  end
  for i = #codings, 1, -1 do
    local coding = codings[i]
    if coding ~= "identity" then
      raw = decoders[coding](raw, limit)
      if not raw then
        return nil, 400, ("the request body cannot be decoded as Content-Encoding '%s'"):format(coding)
      end
      if #raw > limit then
        return nil, 413, ("the request body is larger than %d bytes once decoded"):format(limit)
      end
    end
  end
  return raw
end

return M
