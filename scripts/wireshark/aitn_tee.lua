-- aitn_tee.lua: Wireshark dissector for the frames between aitn's normal world and secure world.
--
-- Captures come from `aitn tee capture` (a relay) or `aitn tee handshake --capture` (pcapng,
-- link type LINKTYPE_USER5 = 152, one frame per packet, direction in the packet flags).
-- See docs/debugging.md. The wire format is tee_sim/abi/frame.py; commands, parameter slots,
-- results and origins are tee_sim/abi/ids.py; the challenge layout is tee_sim/abi/block.py.
--
--   tshark -X lua_script:scripts/wireshark/aitn_tee.lua -r capture.pcapng -V
--   or copy this file to ~/.local/lib/wireshark/plugins/ (Wireshark's personal Lua plugins folder).
--
-- Every defect (short, bad magic, bad version, body past the end, bad CRC, unknown kind or parameter
-- type, parameters past the body) is shown as expert info "malformed"; the dissector never raises
-- a Lua error into Wireshark (the body is dissected under pcall).
-- Tested with tshark 4.0 (Debian bookworm, Lua 5.2).

local USER_DLT = 5 -- DLT_USER5 / LINKTYPE 152: agent/tee/pcapng.py's LINKTYPE

local MAGIC = 0xA1770EE0
local VERSION = 1
local HEADER_SIZE = 40
local MAX_MEMREF = 32 * 1024
local MAX_BODY = 4 * (4 + MAX_MEMREF)
local NONCE_SIZE = 16
local BLOCK_FIELDS_SIZE = 45

------------------------------------------------------------------------------------------------
-- 32-bit operations: Lua 5.2's bit32, or Wireshark's BitOp library ("bit") elsewhere.

local B = bit32
if B == nil then
    local b = bit
    local function u(x) return x % 4294967296 end
    B = {
        band = function(...) return u(b.band(...)) end,
        bor = function(...) return u(b.bor(...)) end,
        bxor = function(...) return u(b.bxor(...)) end,
        bnot = function(x) return u(b.bnot(x)) end,
        lshift = function(x, n) return u(b.lshift(x, n)) end,
        rshift = function(x, n) return u(b.rshift(x, n)) end,
        rrotate = function(x, n) return u(b.ror(x, n)) end,
    }
end
local band, bor, bxor, bnot, lshift, rshift, rrotate = B.band, B.bor, B.bxor, B.bnot, B.lshift, B.rshift, B.rrotate

local CRC_TABLE = {}
for i = 0, 255 do
    local c = i
    for _ = 1, 8 do
        if band(c, 1) == 1 then c = bxor(0xEDB88320, rshift(c, 1)) else c = rshift(c, 1) end
    end
    CRC_TABLE[i] = c
end

-- zlib's crc32(s, crc): chainable like zlib.crc32(body, zlib.crc32(header)).
local function crc32(s, crc)
    crc = bnot(crc or 0)
    for i = 1, #s do
        crc = bxor(CRC_TABLE[band(bxor(crc, s:byte(i)), 0xFF)], rshift(crc, 8))
    end
    return bnot(crc)
end

local K256 = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}

-- SHA-256 of a Lua string, as 64 hex digits: the chain block's body digest (abi.block.message_digest).
local function sha256_hex(msg)
    local H = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 }
    local bits = #msg * 8
    local tail = {}
    for i = 7, 0, -1 do tail[#tail + 1] = string.char(math.floor(bits / 2 ^ (8 * i)) % 256) end
    msg = msg .. "\128" .. string.rep("\0", (55 - #msg) % 64) .. table.concat(tail)
    local w = {}
    for chunk = 1, #msg, 64 do
        for i = 0, 15 do
            local a, b, c, d = msg:byte(chunk + 4 * i, chunk + 4 * i + 3)
            w[i] = bor(lshift(a, 24), lshift(b, 16), lshift(c, 8), d)
        end
        for i = 16, 63 do
            local s0 = bxor(rrotate(w[i - 15], 7), rrotate(w[i - 15], 18), rshift(w[i - 15], 3))
            local s1 = bxor(rrotate(w[i - 2], 17), rrotate(w[i - 2], 19), rshift(w[i - 2], 10))
            w[i] = band(w[i - 16] + s0 + w[i - 7] + s1, 0xFFFFFFFF)
        end
        local a, b, c, d, e, f, g, h = H[1], H[2], H[3], H[4], H[5], H[6], H[7], H[8]
        for i = 0, 63 do
            local t1 = h + bxor(rrotate(e, 6), rrotate(e, 11), rrotate(e, 25)) + bxor(band(e, f), band(bnot(e), g))
                + K256[i + 1] + w[i]
            local t2 = bxor(rrotate(a, 2), rrotate(a, 13), rrotate(a, 22)) + bxor(band(a, b), band(a, c), band(b, c))
            h, g, f, e, d, c, b, a = g, f, e, band(d + t1, 0xFFFFFFFF), c, b, a, band(t1 + t2, 0xFFFFFFFF)
        end
        H[1], H[2], H[3], H[4] = band(H[1] + a, 0xFFFFFFFF), band(H[2] + b, 0xFFFFFFFF),
            band(H[3] + c, 0xFFFFFFFF), band(H[4] + d, 0xFFFFFFFF)
        H[5], H[6], H[7], H[8] = band(H[5] + e, 0xFFFFFFFF), band(H[6] + f, 0xFFFFFFFF),
            band(H[7] + g, 0xFFFFFFFF), band(H[8] + h, 0xFFFFFFFF)
    end
    local out = {}
    for i = 1, 8 do out[i] = string.format("%08x", H[i]) end
    return table.concat(out)
end

local function le32(s, off) -- 0-based offset into a Lua string
    local a, b, c, d = s:byte(off + 1, off + 4)
    return a + b * 256 + c * 65536 + d * 16777216
end

------------------------------------------------------------------------------------------------
-- Names (tee_sim/abi/ids.py and frame.py)

local KIND = { [1] = "OPEN_SESSION", [2] = "INVOKE", [3] = "CLOSE_SESSION" }
local CMD = {
    [0x00] = "STATUS", [0x01] = "GET_PUBKEY", [0x02] = "CREATE_KEY", [0x03] = "PAIR", [0x04] = "SYNC",
    [0x10] = "SIGN", [0x11] = "PROOF", [0x20] = "PSEUDONYM", [0x21] = "SEAL", [0x22] = "UNSEAL",
}
local UNCHAINED = { [0x00] = true, [0x01] = true, [0x02] = true, [0x03] = true, [0x04] = true }
local LOGIN = { [0] = "PUBLIC", [1] = "USER", [2] = "GROUP", [4] = "APPLICATION" }
local PTYPE = {
    [0x0] = "NONE", [0x1] = "VALUE_INPUT", [0x2] = "VALUE_OUTPUT", [0x3] = "VALUE_INOUT",
    [0x5] = "MEMREF_TEMP_INPUT", [0x6] = "MEMREF_TEMP_OUTPUT", [0x7] = "MEMREF_TEMP_INOUT",
}
local RESULT = {
    [0x00000000] = "SUCCESS", [0xFFFF0000] = "GENERIC", [0xFFFF0001] = "ACCESS_DENIED", [0xFFFF0002] = "CANCEL",
    [0xFFFF0003] = "ACCESS_CONFLICT", [0xFFFF0004] = "EXCESS_DATA", [0xFFFF0005] = "BAD_FORMAT",
    [0xFFFF0006] = "BAD_PARAMETERS", [0xFFFF0007] = "BAD_STATE", [0xFFFF0008] = "ITEM_NOT_FOUND",
    [0xFFFF0009] = "NOT_IMPLEMENTED", [0xFFFF000A] = "NOT_SUPPORTED", [0xFFFF000B] = "NO_DATA",
    [0xFFFF000C] = "OUT_OF_MEMORY", [0xFFFF000D] = "BUSY", [0xFFFF000E] = "COMMUNICATION",
    [0xFFFF000F] = "SECURITY", [0xFFFF0010] = "SHORT_BUFFER", [0xFFFF3024] = "TARGET_DEAD",
    [0xFFFF3041] = "STORAGE_NO_SPACE", [0xFFFF3071] = "MAC_INVALID", [0xFFFF3072] = "SIGNATURE_INVALID",
}
local ORIGIN = { [0] = "none", [1] = "API", [2] = "COMMS", [3] = "TEE", [4] = "TRUSTED_APP" }
local PURPOSE = { [0] = "RAW_DIGEST", [1] = "PERSONAL_MESSAGE", [2] = "BATCH" }
local BLOCK_DIRECTION = { [0] = "request (NW -> SW)", [1] = "response (SW -> NW)" }
local P2P = { [0] = "NW -> SW (outbound)", [1] = "SW -> NW (inbound)" }

------------------------------------------------------------------------------------------------
-- Protocol and fields

local proto = Proto("aitn_tee", "AITN TEE frame (normal world <-> secure world)")

local F = {
    magic = ProtoField.uint32("aitn_tee.magic", "Magic", base.HEX),
    version = ProtoField.uint8("aitn_tee.version", "Version"),
    kind = ProtoField.uint8("aitn_tee.kind", "Kind", base.HEX, KIND, 0x7F),
    response = ProtoField.bool("aitn_tee.response", "Response", 8, nil, 0x80),
    reserved = ProtoField.uint16("aitn_tee.reserved", "Reserved", base.HEX),
    request_id = ProtoField.uint32("aitn_tee.request_id", "Request id"),
    session = ProtoField.uint32("aitn_tee.session", "Session"),
    command = ProtoField.uint32("aitn_tee.command", "Command", base.HEX, CMD),
    login = ProtoField.uint32("aitn_tee.login", "Login", base.DEC, LOGIN),
    command_raw = ProtoField.uint32("aitn_tee.command_field", "Command field", base.HEX),
    cmd_name = ProtoField.string("aitn_tee.cmd", "Command name"),
    param_types = ProtoField.uint32("aitn_tee.param_types", "Parameter types", base.HEX),
    ptype0 = ProtoField.uint32("aitn_tee.param_types.p0", "p0", base.HEX, PTYPE, 0x000F),
    ptype1 = ProtoField.uint32("aitn_tee.param_types.p1", "p1", base.HEX, PTYPE, 0x00F0),
    ptype2 = ProtoField.uint32("aitn_tee.param_types.p2", "p2", base.HEX, PTYPE, 0x0F00),
    ptype3 = ProtoField.uint32("aitn_tee.param_types.p3", "p3", base.HEX, PTYPE, 0xF000),
    result = ProtoField.uint32("aitn_tee.result", "Result", base.HEX, RESULT),
    result_name = ProtoField.string("aitn_tee.result_name", "Result name"),
    origin = ProtoField.uint32("aitn_tee.origin", "Origin", base.DEC, ORIGIN),
    origin_name = ProtoField.string("aitn_tee.origin_name", "Origin name"),
    body_len = ProtoField.uint32("aitn_tee.body_len", "Body length"),
    crc = ProtoField.uint32("aitn_tee.crc32", "CRC-32", base.HEX),
    crc_good = ProtoField.bool("aitn_tee.crc32.good", "CRC-32 good"),
    param = ProtoField.none("aitn_tee.param", "Parameter"),
    slot = ProtoField.uint8("aitn_tee.param.slot", "Slot"),
    ptype = ProtoField.uint8("aitn_tee.param.type", "Type", base.HEX, PTYPE),
    value_a = ProtoField.uint32("aitn_tee.param.a", "a"),
    value_b = ProtoField.uint32("aitn_tee.param.b", "b"),
    mem_len = ProtoField.uint32("aitn_tee.param.len", "Length"),
    mem_data = ProtoField.bytes("aitn_tee.param.data", "Data"),
    capacity = ProtoField.uint32("aitn_tee.param.capacity", "Output capacity"),
    -- what the parameters mean, per command
    ta_uuid = ProtoField.guid("aitn_tee.ta_uuid", "TA UUID"),
    committed_height = ProtoField.uint64("aitn_tee.committed_height", "Committed height"),
    claimed_height = ProtoField.uint64("aitn_tee.claimed_height", "Claimed height"),
    session_nonce = ProtoField.bytes("aitn_tee.session_nonce", "Session nonce"),
    flags = ProtoField.uint32("aitn_tee.flags", "Flags", base.HEX),
    flag_key = ProtoField.bool("aitn_tee.flags.key", "Device key", 32, nil, 0x1),
    flag_paired = ProtoField.bool("aitn_tee.flags.paired", "Paired", 32, nil, 0x2),
    flag_locked = ProtoField.bool("aitn_tee.flags.locked", "Locked out", 32, nil, 0x4),
    flag_state_error = ProtoField.bool("aitn_tee.flags.state_error", "State error", 32, nil, 0x8),
    timelock = ProtoField.uint32("aitn_tee.timelock", "Time-lock iterations"),
    lockout = ProtoField.uint32("aitn_tee.lockout_seconds", "Lockout seconds left"),
    status = ProtoField.string("aitn_tee.status", "Status JSON"),
    public_key = ProtoField.bytes("aitn_tee.public_key", "Public key"),
    address = ProtoField.bytes("aitn_tee.address", "EVM address"),
    nw_x25519 = ProtoField.bytes("aitn_tee.pair.nw_x25519", "Normal world X25519 key"),
    tee_x25519 = ProtoField.bytes("aitn_tee.pair.tee_x25519", "Secure world X25519 key"),
    pairing_id = ProtoField.bytes("aitn_tee.pair.pairing_id", "Pairing id"),
    k = ProtoField.uint32("aitn_tee.pair.k", "Heights per challenge"),
    sync_tag = ProtoField.bytes("aitn_tee.sync.tag", "Sync tag"),
    nw_nonce = ProtoField.bytes("aitn_tee.sync.nw_nonce", "Normal world nonce"),
    ack_tag = ProtoField.bytes("aitn_tee.sync.ack", "Ack tag"),
    rb = ProtoField.none("aitn_tee.sync.block", "Re-delivered block"),
    rb_height = ProtoField.uint64("aitn_tee.sync.block.height", "Height"),
    rb_direction = ProtoField.uint8("aitn_tee.sync.block.direction", "Direction", base.DEC, BLOCK_DIRECTION),
    rb_command = ProtoField.uint32("aitn_tee.sync.block.command", "Command", base.HEX, CMD),
    rb_digest = ProtoField.bytes("aitn_tee.sync.block.body_digest", "Body digest"),
    purpose = ProtoField.uint32("aitn_tee.sign.purpose", "Purpose", base.DEC, PURPOSE),
    digest = ProtoField.bytes("aitn_tee.sign.digest", "Digest"),
    message = ProtoField.string("aitn_tee.sign.message", "Message"),
    batch_items = ProtoField.uint32("aitn_tee.sign.batch_items", "Batch items"),
    challenge = ProtoField.none("aitn_tee.challenge", "Challenge"),
    challenge_nonce = ProtoField.bytes("aitn_tee.challenge.nonce", "Nonce"),
    challenge_k = ProtoField.uint8("aitn_tee.challenge.k", "Heights"),
    challenge_height = ProtoField.uint64("aitn_tee.challenge.height", "Height"),
    proof = ProtoField.bytes("aitn_tee.proof", "Proof"),
    sig_r = ProtoField.bytes("aitn_tee.signature.r", "Signature r"),
    sig_s = ProtoField.bytes("aitn_tee.signature.s", "Signature s"),
    sig_v = ProtoField.uint8("aitn_tee.signature.v", "Signature v"),
    signed_digest = ProtoField.bytes("aitn_tee.signed_digest", "Signed digest"),
    domain = ProtoField.uint32("aitn_tee.pseudonym.domain", "Domain"),
    pseudonym = ProtoField.bytes("aitn_tee.pseudonym", "Pseudonym"),
    -- generated
    direction = ProtoField.uint8("aitn_tee.direction", "Direction", base.DEC, P2P),
    transport = ProtoField.string("aitn_tee.transport", "Transport"),
    request_in = ProtoField.framenum("aitn_tee.request_in", "Request in frame"),
    block_height = ProtoField.uint64("aitn_tee.block.height", "Chain block height"),
    body_digest = ProtoField.string("aitn_tee.block.body_digest", "Chain block body digest (SHA-256, hex)"),
    meaning = ProtoField.none("aitn_tee.meaning", "Meaning"),
    malformed_reason = ProtoField.string("aitn_tee.malformed", "Malformed"),
}
local field_list = {}
for _, f in pairs(F) do field_list[#field_list + 1] = f end
proto.fields = field_list

local E = {
    malformed = ProtoExpert.new("aitn_tee.malformed.expert", "Malformed AITN TEE frame",
        expert.group.MALFORMED, expert.severity.ERROR),
    bad_crc = ProtoExpert.new("aitn_tee.crc32.bad", "CRC-32 mismatch", expert.group.CHECKSUM, expert.severity.ERROR),
    error_result = ProtoExpert.new("aitn_tee.result.error", "TEEC error result", expert.group.RESPONSE_CODE,
        expert.severity.WARN),
    capture_note = ProtoExpert.new("aitn_tee.capture_note", "Capture comment", expert.group.COMMENTS_GROUP,
        expert.severity.NOTE),
}
proto.experts = { E.malformed, E.bad_crc, E.error_result, E.capture_note }

local f_iface_id = Field.new("frame.interface_id")
local f_iface_name = Field.new("frame.interface_name")
local f_comment = Field.new("frame.comment")

------------------------------------------------------------------------------------------------
-- State across packets (per capture): chain heights after SYNC, request frames for responses.

local state
local function reset()
    state = { head = {}, pending = {}, requests = {}, memo = {} }
end
reset()
proto.init = reset

local function u64_of(a, b) return UInt64.new(a, b) end

local function track(num, iface, kind_base, resp, session, request_id, command, result, params)
    -- Returns the memo of this packet: { height = n | nil, request_in = frame | nil }.
    local memo = state.memo[num]
    if memo then return memo end
    memo = {}
    state.memo[num] = memo
    local skey = iface .. ":" .. session
    local rkey = iface .. ":" .. request_id
    if not resp then
        state.requests[rkey] = num
    else
        memo.request_in = state.requests[rkey]
    end
    if kind_base == 3 then
        state.head[skey] = nil
        return memo
    end
    if kind_base ~= 2 then return memo end
    if not resp then
        if UNCHAINED[command] or state.head[skey] == nil then return memo end
        state.head[skey] = state.head[skey] + 1
        state.pending[rkey] = skey
        memo.height = state.head[skey]
        return memo
    end
    if command == 0x04 then
        local top = params[3]
        if result == 0 and top and top.kind == "v" then
            state.head[skey] = top.a + top.b * 4294967296
        else
            state.head[skey] = nil
        end
        return memo
    end
    local owner = state.pending[rkey]
    state.pending[rkey] = nil
    if owner == nil or state.head[owner] == nil then return memo end
    if result ~= 0 then
        state.head[owner] = nil -- a failed exchange ends the sync
        return memo
    end
    state.head[owner] = state.head[owner] + 1
    memo.height = state.head[owner]
    return memo
end

------------------------------------------------------------------------------------------------
-- Dissection

local function malformed(tree, pinfo, reason, range)
    local item = range and tree:add(F.malformed_reason, range, reason) or tree:add(F.malformed_reason, reason)
    item:set_generated()
    tree:add_proto_expert_info(E.malformed, "Malformed: " .. reason)
    pinfo.cols.info:append(" [MALFORMED: " .. reason .. "]")
end

local function slot_layout(t, resp)
    if t == 0x3 or (t == 0x1 and not resp) or (t == 0x2 and resp) then return "v" end
    if t == 0x7 or (t == 0x5 and not resp) or (t == 0x6 and resp) then return "m" end
    if t == 0x6 and not resp then return "cap" end
    return nil
end

local function mem(p, size) return p and p.kind == "m" and (size == nil or p.len == size) end

-- What the parameters mean for each command (docs/handshake.md's parameter table). Returns a reason
-- when a parameter does not have its command's layout (the frame itself was well formed).
local function meaning(tree, kind_base, resp, command, result, params)
    if resp and result ~= 0 then return end
    local p0, p1, p2, p3 = params[0], params[1], params[2], params[3]
    if kind_base == 1 then
        if not resp then
            if mem(p0, 16) then tree:add(F.ta_uuid, p0.data) end
        else
            if p1 and p1.kind == "v" then
                tree:add(F.committed_height, p1.range, u64_of(p1.a, p1.b))
            end
            if mem(p2) and p2.len > 0 then tree:add(F.session_nonce, p2.data) end
            if p3 and p3.kind == "v" then
                local fl = tree:add_le(F.flags, p3.range_a)
                fl:add_le(F.flag_key, p3.range_a)
                fl:add_le(F.flag_paired, p3.range_a)
                fl:add_le(F.flag_locked, p3.range_a)
                fl:add_le(F.flag_state_error, p3.range_a)
                tree:add_le(F.timelock, p3.range_b)
            end
        end
        return
    end
    if kind_base ~= 2 then return end
    if command == 0x00 and resp then
        if p0 and p0.kind == "v" then
            local fl = tree:add_le(F.flags, p0.range_a)
            fl:add_le(F.flag_key, p0.range_a)
            fl:add_le(F.flag_paired, p0.range_a)
            fl:add_le(F.flag_locked, p0.range_a)
            fl:add_le(F.flag_state_error, p0.range_a)
            tree:add_le(F.lockout, p0.range_b)
        end
        if mem(p1) and p1.len > 0 then tree:add(F.status, p1.data) end
    elseif (command == 0x01 or command == 0x02) and resp then
        if mem(p0) and p0.len > 0 then tree:add(F.public_key, p0.data) end
        if mem(p1) and p1.len > 0 then tree:add(F.address, p1.data) end
    elseif command == 0x03 then
        if not resp then
            if mem(p0) and p0.len > 0 then tree:add(F.nw_x25519, p0.data) end
            if p1 and p1.kind == "v" then tree:add_le(F.timelock, p1.range_a) end
        else
            if mem(p2, 32 + 16) then
                tree:add(F.tee_x25519, p2.data:range(0, 32))
                tree:add(F.pairing_id, p2.data:range(32, 16))
            end
            if p3 and p3.kind == "v" then
                tree:add_le(F.timelock, p3.range_a)
                tree:add_le(F.k, p3.range_b)
            end
        end
    elseif command == 0x04 then
        if not resp then
            if p0 and p0.kind == "v" then tree:add(F.claimed_height, p0.range, u64_of(p0.a, p0.b)) end
            if mem(p1, 32 + NONCE_SIZE) then
                tree:add(F.sync_tag, p1.data:range(0, 32))
                tree:add(F.nw_nonce, p1.data:range(32, NONCE_SIZE))
            end
        else
            if mem(p2) and p2.len >= 32 then
                tree:add(F.ack_tag, p2.data:range(0, 32))
                if p2.len == 32 + BLOCK_FIELDS_SIZE then
                    local r = p2.data:range(32, BLOCK_FIELDS_SIZE)
                    local bt = tree:add(F.rb, r)
                    bt:add(F.rb_height, r:range(0, 8))
                    bt:add(F.rb_direction, r:range(8, 1))
                    bt:add(F.rb_command, r:range(9, 4))
                    bt:add(F.rb_digest, r:range(13, 32))
                end
            end
            if p3 and p3.kind == "v" then tree:add(F.committed_height, p3.range, u64_of(p3.a, p3.b)) end
        end
    elseif command == 0x10 then
        if not resp then
            local purpose = p1 and p1.kind == "v" and p1.a or nil
            if purpose ~= nil then tree:add_le(F.purpose, p1.range_a) end
            if mem(p0) and p0.len > 0 then
                if purpose == 0 then
                    tree:add(F.digest, p0.data)
                elseif purpose == 1 then
                    tree:add(F.message, p0.data)
                elseif purpose == 2 then
                    tree:add(F.batch_items, p0.data, math.floor(p0.len / 32))
                end
            end
        elseif mem(p2) then
            local r = p2.data
            local n = p2.len
            local ct = tree:add(F.challenge, r or p2.range)
            if n < NONCE_SIZE + 1 then
                return "challenge of " .. n .. " bytes is too short"
            end
            ct:add(F.challenge_nonce, r:range(0, NONCE_SIZE))
            local k = r:range(NONCE_SIZE, 1):uint()
            ct:add(F.challenge_k, r:range(NONCE_SIZE, 1))
            if k == 0 or n ~= NONCE_SIZE + 1 + 8 * k then
                return "challenge of " .. n .. " bytes does not hold " .. k .. " heights"
            end
            local hs = {}
            for i = 0, k - 1 do
                local hr = r:range(NONCE_SIZE + 1 + 8 * i, 8)
                ct:add(F.challenge_height, hr)
                hs[#hs + 1] = tostring(hr:uint64())
            end
            ct:append_text(": heights " .. table.concat(hs, ", "))
        end
    elseif command == 0x11 then
        if not resp then
            if mem(p0) and p0.len > 0 then tree:add(F.proof, p0.data) end
        else
            if mem(p1, 65) then
                tree:add(F.sig_r, p1.data:range(0, 32))
                tree:add(F.sig_s, p1.data:range(32, 32))
                tree:add(F.sig_v, p1.data:range(64, 1))
            end
            if mem(p2) and p2.len > 0 then tree:add(F.signed_digest, p2.data) end
        end
    elseif command == 0x20 then
        if not resp and p1 and p1.kind == "v" then tree:add_le(F.domain, p1.range_a) end
        if resp and mem(p2) and p2.len > 0 then tree:add(F.pseudonym, p2.data) end
    end
end

-- Parameters from the body; returns params (slot -> table) or nil after marking the frame malformed.
local function dissect_body(tvb, pinfo, tree, types, resp, body_len)
    local params = {}
    local pos = HEADER_SIZE
    local stop = HEADER_SIZE + body_len
    for slot = 0, 3 do
        local t = band(rshift(types, 4 * slot), 0xF)
        local enc = slot_layout(t, resp)
        if enc then
            local pt = tree:add(F.param, tvb(pos, 0))
            pt:set_text(string.format("p%d %s", slot, PTYPE[t] or "?"))
            pt:add(F.slot, slot):set_generated()
            pt:add(F.ptype, t):set_generated()
            if enc == "v" then
                if pos + 8 > stop then
                    malformed(pt, pinfo, "p" .. slot .. ": value runs past the body")
                    return nil
                end
                local ra, rb = tvb(pos, 4), tvb(pos + 4, 4)
                pt:add_le(F.value_a, ra)
                pt:add_le(F.value_b, rb)
                pt:set_len(8)
                params[slot] = { kind = "v", a = ra:le_uint(), b = rb:le_uint(), range = tvb(pos, 8),
                    range_a = ra, range_b = rb }
                pt:append_text(string.format(": a=%d b=%d", ra:le_uint(), rb:le_uint()))
                pos = pos + 8
            else
                if pos + 4 > stop then
                    malformed(pt, pinfo, "p" .. slot .. ": length runs past the body")
                    return nil
                end
                local n = tvb(pos, 4):le_uint()
                if enc == "cap" then
                    pt:add_le(F.capacity, tvb(pos, 4))
                    pt:set_len(4)
                    pt:append_text(": capacity " .. n)
                    if n > MAX_MEMREF then
                        malformed(pt, pinfo, "p" .. slot .. ": capacity " .. n .. " exceeds " .. MAX_MEMREF)
                        return nil
                    end
                    params[slot] = { kind = "cap", len = n }
                    pos = pos + 4
                else
                    pt:add_le(F.mem_len, tvb(pos, 4))
                    if n > MAX_MEMREF then
                        malformed(pt, pinfo, "p" .. slot .. ": memref length " .. n .. " exceeds " .. MAX_MEMREF)
                        return nil
                    end
                    if pos + 4 + n > stop then
                        malformed(pt, pinfo, "p" .. slot .. ": memref of " .. n .. " bytes runs past the body")
                        return nil
                    end
                    local data = n > 0 and tvb(pos + 4, n) or nil
                    if data then pt:add(F.mem_data, data) end
                    pt:set_len(4 + n)
                    pt:append_text(": " .. n .. " bytes")
                    params[slot] = { kind = "m", len = n, data = data, range = tvb(pos, 4 + n) }
                    pos = pos + 4 + n
                end
            end
        end
    end
    if pos ~= stop then
        malformed(tree, pinfo, (stop - pos) .. " body bytes left after p3", tvb(pos, stop - pos))
        return nil
    end
    return params
end

local function dissect(tvb, pinfo, tree, root)
    local len = tvb:captured_len()
    local dir = pinfo.p2p_dir
    if dir == 0 or dir == 1 then
        tree:add(F.direction, dir):set_generated()
    elseif len >= 6 then
        dir = band(tvb(5, 1):uint(), 0x80) ~= 0 and 1 or 0 -- no packet flags: responses come from SW
    end
    if dir == 0 or dir == 1 then
        pinfo.cols.src:set(dir == 0 and "NW" or "SW")
        pinfo.cols.dst:set(dir == 0 and "SW" or "NW")
    end
    local iname = f_iface_name()
    if iname then tree:add(F.transport, iname.value):set_generated() end
    local comment = f_comment()
    if comment then tree:add_proto_expert_info(E.capture_note, "Capture comment: " .. tostring(comment.value)) end

    if len < HEADER_SIZE then
        malformed(tree, pinfo, "short: " .. len .. " of " .. HEADER_SIZE .. " header bytes",
            len > 0 and tvb(0, len) or nil)
        pinfo.cols.info:set("Short frame (" .. len .. " bytes) [MALFORMED]")
        return
    end
    local magic = tvb(0, 4):le_uint()
    tree:add_le(F.magic, tvb(0, 4))
    if magic ~= MAGIC then
        malformed(tree, pinfo, string.format("bad magic 0x%08X", magic), tvb(0, 4))
        pinfo.cols.info:set(string.format("Not a frame: bad magic 0x%08X [MALFORMED]", magic))
        return
    end
    local version = tvb(4, 1):uint()
    local kind = tvb(5, 1):uint()
    local kind_base, resp = band(kind, 0x7F), band(kind, 0x80) ~= 0
    local request_id = tvb(8, 4):le_uint()
    local session = tvb(12, 4):le_uint()
    local command = tvb(16, 4):le_uint()
    local types = tvb(20, 4):le_uint()
    local result = tvb(24, 4):le_uint()
    local origin = tvb(28, 4):le_uint()
    local body_len = tvb(32, 4):le_uint()
    local crc = tvb(36, 4):le_uint()

    tree:add(F.version, tvb(4, 1))
    tree:add(F.kind, tvb(5, 1))
    tree:add(F.response, tvb(5, 1))
    tree:add_le(F.reserved, tvb(6, 2))
    tree:add_le(F.request_id, tvb(8, 4))
    tree:add_le(F.session, tvb(12, 4))
    local cname
    if kind_base == 2 then
        tree:add_le(F.command, tvb(16, 4))
        cname = CMD[command] or string.format("0x%x", command)
    elseif kind_base == 1 then
        tree:add_le(F.login, tvb(16, 4))
        cname = "OPEN_SESSION"
    else
        tree:add_le(F.command_raw, tvb(16, 4))
        cname = KIND[kind_base] or string.format("kind 0x%02x", kind_base)
    end
    tree:add(F.cmd_name, cname):set_generated()
    local pt = tree:add_le(F.param_types, tvb(20, 4))
    pt:add_le(F.ptype0, tvb(20, 4))
    pt:add_le(F.ptype1, tvb(20, 4))
    pt:add_le(F.ptype2, tvb(20, 4))
    pt:add_le(F.ptype3, tvb(20, 4))
    local rname = RESULT[result] or string.format("0x%08X", result)
    if resp then
        local ri = tree:add_le(F.result, tvb(24, 4))
        tree:add(F.result_name, rname):set_generated()
        if result ~= 0 then ri:add_proto_expert_info(E.error_result, "TEEC error result " .. rname) end
        tree:add_le(F.origin, tvb(28, 4))
        tree:add(F.origin_name, ORIGIN[origin] or tostring(origin)):set_generated()
    else
        tree:add_le(F.result, tvb(24, 4))
        tree:add_le(F.origin, tvb(28, 4))
    end
    tree:add_le(F.body_len, tvb(32, 4))
    local crc_item = tree:add_le(F.crc, tvb(36, 4))

    local info = cname .. (resp and " response" or " request") .. " req#" .. request_id .. " session " .. session
    if resp then info = info .. " " .. rname end
    pinfo.cols.info:set(info)
    root:append_text(", " .. info)

    if version ~= VERSION then
        malformed(tree, pinfo, "version " .. version .. ", this dissector knows " .. VERSION, tvb(4, 1))
        return
    end
    if tvb(6, 2):le_uint() ~= 0 then
        malformed(tree, pinfo, "reserved field is not zero", tvb(6, 2))
        return
    end
    if body_len > MAX_BODY then
        malformed(tree, pinfo, "body_len " .. body_len .. " exceeds " .. MAX_BODY, tvb(32, 4))
        return
    end
    if HEADER_SIZE + body_len > len then
        malformed(tree, pinfo, "body_len " .. body_len .. " runs past the end (" .. (len - HEADER_SIZE)
            .. " body bytes)", tvb(32, 4))
        return
    end
    if HEADER_SIZE + body_len < len then
        malformed(tree, pinfo, (len - HEADER_SIZE - body_len) .. " bytes after the body",
            tvb(HEADER_SIZE + body_len, len - HEADER_SIZE - body_len))
        return
    end
    local raw = tvb:raw(0, len)
    local computed = crc32(raw:sub(HEADER_SIZE + 1), crc32(raw:sub(1, HEADER_SIZE - 4) .. "\0\0\0\0"))
    crc_item:add(F.crc_good, computed == crc):set_generated()
    if computed ~= crc then
        crc_item:append_text(string.format(" [incorrect, should be 0x%08x]", computed))
        crc_item:add_proto_expert_info(E.bad_crc, string.format("CRC-32 mismatch: computed 0x%08x", computed))
        malformed(tree, pinfo, "crc32 mismatch", tvb(36, 4))
        return
    end
    if KIND[kind_base] == nil then
        malformed(tree, pinfo, string.format("kind 0x%02x unknown", kind), tvb(5, 1))
        return
    end
    if not resp and (result ~= 0 or origin ~= 0) then
        malformed(tree, pinfo, "request carries a result or origin", tvb(24, 8))
        return
    end
    if types >= 0x10000 then
        malformed(tree, pinfo, string.format("param_types 0x%08x: bits above 16 set", types), tvb(20, 4))
        return
    end
    for slot = 0, 3 do
        local t = band(rshift(types, 4 * slot), 0xF)
        if PTYPE[t] == nil then
            malformed(tree, pinfo, string.format("param_types 0x%04x: p%d has unknown type 0x%x", types, slot, t),
                tvb(20, 4))
            return
        end
    end

    local params = dissect_body(tvb, pinfo, tree, types, resp, body_len)
    if params == nil then return end

    local iid = f_iface_id()
    local memo = track(pinfo.number, iid and iid.value or 0, kind_base, resp, session, request_id, command,
        result, params)
    if memo.request_in then tree:add(F.request_in, memo.request_in):set_generated() end
    local mt = body_len > 0 and tree:add(F.meaning, tvb(HEADER_SIZE, body_len)) or tree:add(F.meaning)
    local bad = meaning(mt, kind_base, resp, command, result, params)
    if bad then malformed(mt, pinfo, bad) end
    if memo.height then
        local digest = sha256_hex(raw:sub(6, 6) .. raw:sub(17, 32) .. raw:sub(HEADER_SIZE + 1))
        tree:add(F.block_height, UInt64.new(memo.height % 4294967296, math.floor(memo.height / 4294967296)))
            :set_generated()
        tree:add(F.body_digest, digest):set_generated()
        pinfo.cols.info:append(" [block " .. memo.height .. "]")
    end
end

function proto.dissector(tvb, pinfo, tree)
    pinfo.cols.protocol = "AITN-TEE"
    pinfo.cols.info:clear()
    local root = tree:add(proto, tvb())
    local ok, err = pcall(dissect, tvb, pinfo, root, root)
    if not ok then
        malformed(root, pinfo, "dissector error: " .. tostring(err))
    end
    return tvb:captured_len()
end

DissectorTable.get("wtap_encap"):add(wtap_encaps["USER" .. USER_DLT], proto)
