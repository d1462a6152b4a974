-- One round trip per batch: for each event, in order, the account's state *before* it, then record the event.
-- KEYS: none (keys are built from the prefix, so a single Redis, not a cluster).
-- ARGV: prefix, history_ttl_s, dedupe_ttl_s, velocity windows (comma list), fanout windows, max known countries,
--       and the events as one JSON array of [tx, fingerprint, account, ts_ms, country, ip, counterparty, amount].
-- Returns a JSON array with one entry per event: the snapshot, or {"error": "..."} for an event whose state could
-- not be read or written (one bad account never fails the others). A snapshot is positional, built as text (no
-- cjson on the common path): [replayed, id_reused, prior_count, country_seen, counterparty_seen, amount_mean,
-- amount_std, [window, count, ...velocity], [window, count, ...fanout], [known countries]], flags as 0/1, numbers
-- with 14 significant digits. Snapshots stored by earlier versions (JSON objects) are still answered.
local prefix, history_ttl, dedupe_ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local max_countries = tonumber(ARGV[6])
local function windows(text)
  local list = {}
  for w in string.gmatch(text, '[^,]+') do list[#list + 1] = tonumber(w) end
  return list
end
local velocity, fanout = windows(ARGV[4]), windows(ARGV[5])
local longest_velocity, longest_fanout = velocity[#velocity] or 0, fanout[#fanout] or 0
-- A transaction id may come back with other content this many times before its variants stop being remembered.
local MAX_VARIANTS = 16
-- Entries older than the longest window no longer count (ZCOUNT bounds by time); trimming them on about one
-- event in TRIM_EVERY (by event-time millisecond) keeps busy keys small at a fraction of the calls.
local TRIM_EVERY = 8

-- Every key lives at least its TTL after each event that touched it. Pushing an expiry out is a write, which
-- costs Redis as much as a write of the event's own; so it is pushed only once less than the TTL is left, and
-- then to the TTL plus an eighth (at most an hour): most events pay a read (PTTL) instead.
local HOUR_MS = 3600000
local function keep_for(key, ttl_ms)
  if redis.call('PTTL', key) < ttl_ms then
    redis.call('PEXPIRE', key, string.format('%d', ttl_ms + math.min(math.floor(ttl_ms / 8), HOUR_MS)))
  end
end

local function finite(x)
  return x ~= nil and x == x and x ~= math.huge and x ~= -math.huge
end

local function observe(row)
  local tx, fp, account, ts, country, ip, cp, amount = unpack(row)
  if not finite(amount) or not finite(ts) then error('amount and timestamp must be finite numbers') end
  -- Numbers go to Redis as text formatted here: Lua's own conversion (concatenation, or a number passed to
  -- redis.call) is printf's %.14g / %.17g, which took about a tenth of the script's instructions.
  local at = string.format('%d', ts)
  -- An id's first content is a string, its fingerprint then its snapshot (one SET with the TTL); more contents
  -- under the same id make it a hash of fingerprint -> snapshot (as earlier versions kept every id).
  local tx_key = prefix .. 'tx:' .. tx
  local first = redis.pcall('GET', tx_key)  -- false: new; a table: not a string (WRONGTYPE), so a hash
  local seen = {}  -- fingerprint, snapshot, ... (at most MAX_VARIANTS pairs)
  if type(first) == 'string' then
    local at = string.find(first, '[', 1, true)
    seen = {string.sub(first, 1, at - 1), string.sub(first, at)}
  elseif first then
    seen = redis.call('HGETALL', tx_key)
  end
  for k = 1, #seen, 2 do
    if seen[k] == fp then
      local known = seen[k + 1]
      if string.sub(known, 1, 1) == '{' then  -- stored by an earlier version
        local snapshot = cjson.decode(known)
        snapshot.replayed = true
        return cjson.encode(snapshot)
      end
      return '[1' .. string.sub(known, 3)
    end
  end
  local variants = #seen / 2
  local acct = prefix .. 'acct:' .. account
  local got = redis.call('HMGET', acct, 'n', 'mean', 'm2', 'c:' .. country, 'p:' .. cp)
  local n, mean, m2 = tonumber(got[1]) or 0, tonumber(got[2]) or 0, tonumber(got[3]) or 0
  if not (finite(n) and finite(mean) and finite(m2)) or n < 0 or m2 < 0 then
    n, mean, m2 = 0, 0, 0  -- unreadable statistics (written by an older version): start them again
  end
  local std = 0
  if n > 0 then std = math.sqrt(m2 / n) end
  local country_seen, cp_seen = country == '' or got[4] ~= false, cp == '' or got[5] ~= false
  local countries = {}
  if not country_seen then
    local all = {}
    for _, field in ipairs(redis.call('HKEYS', acct)) do
      if string.sub(field, 1, 2) == 'c:' then all[#all + 1] = string.sub(field, 3) end
    end
    table.sort(all)
    for k = 1, math.min(#all, max_countries) do countries[k] = all[k] end
  end
  local velocity_counts, fanout_counts = {}, {}
  local vel = prefix .. 'vel:' .. account
  for _, w in ipairs(velocity) do
    local count = redis.call('ZCOUNT', vel, string.format('(%d', ts - w), at)
    velocity_counts[#velocity_counts + 1] = string.format('%d,%d', w, count)
  end
  local ip_key = prefix .. 'ip:' .. ip
  if ip ~= '' and longest_fanout > 0 then
    redis.call('ZADD', ip_key, 'GT', at, account)
    if ts % TRIM_EVERY == 0 then
      redis.call('ZREMRANGEBYSCORE', ip_key, '-inf', string.format('%d', ts - longest_fanout))
    end
    keep_for(ip_key, longest_fanout)
  end
  for _, w in ipairs(fanout) do
    local count = 0
    if ip ~= '' then count = redis.call('ZCOUNT', ip_key, string.format('(%d', ts - w), '+inf') end
    fanout_counts[#fanout_counts + 1] = string.format('%d,%d', w, count)
  end
  local known_countries = '[]'
  if #countries > 0 then known_countries = cjson.encode(countries) end
  local snapshot = string.format('[0,%d,%.14g,%d,%d,%.14g,%.14g,[%s],[%s],%s]', variants > 0 and 1 or 0, n,
    country_seen and 1 or 0, cp_seen and 1 or 0, mean, std, table.concat(velocity_counts, ','),
    table.concat(fanout_counts, ','), known_countries)
  if variants == 0 then
    redis.call('SET', tx_key, fp .. snapshot, 'EX', dedupe_ttl)
  elseif variants < MAX_VARIANTS then
    if type(first) == 'string' then  -- the second content: the string becomes a hash of both
      redis.call('DEL', tx_key)
      redis.call('HSET', tx_key, seen[1], seen[2])
    end
    redis.call('HSET', tx_key, fp, snapshot)
    redis.call('EXPIRE', tx_key, dedupe_ttl)
  end
  local next_n = n + 1
  local delta = amount - mean
  local next_mean = mean + delta / next_n
  local next_m2 = m2 + delta * (amount - next_mean)
  local update = {}
  if finite(next_mean) and finite(next_m2) then
    update = {'n', string.format('%d', next_n), 'mean', string.format('%.17g', next_mean),
              'm2', string.format('%.17g', next_m2)}
  end
  if country ~= '' then update[#update + 1] = 'c:' .. country; update[#update + 1] = '1' end
  if cp ~= '' then update[#update + 1] = 'p:' .. cp; update[#update + 1] = '1' end
  if #update > 0 then redis.call('HSET', acct, unpack(update)) end
  keep_for(acct, history_ttl * 1000)
  if longest_velocity > 0 then
    local member = tx .. '|' .. fp
    redis.call('ZADD', vel, at, member)
    if ts % TRIM_EVERY == 0 then
      redis.call('ZREMRANGEBYSCORE', vel, '-inf', string.format('%d', ts - longest_velocity))
    end
    keep_for(vel, longest_velocity)
  end
  return snapshot
end

local out = {}
for i, row in ipairs(cjson.decode(ARGV[7])) do
  local ok, result = pcall(observe, row)
  if ok then
    out[i] = result
  else
    if type(result) == 'table' then result = result.err end  -- a redis.call error
    out[i] = cjson.encode({error = tostring(result)})
  end
end
return '[' .. table.concat(out, ',') .. ']'
