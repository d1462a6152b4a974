-- Declared aggregates, one round trip per batch: for each event, in order, the aggregates' values *before* it,
-- then the event is recorded. Key layout and the plan's shape: stream_app/state.py.
-- KEYS: none yet (on one Redis; see state.py for the cluster's split by slot).
-- ARGV: prefix, dedupe_ttl_s, plan id (8 characters), the plan (JSON, built by state.py from the declarations),
--       the events as one JSON array of [tx, fingerprint, ts_ms, amount, field value, ...] ('' = absent).
-- Returns a JSON array with one entry per event: the values in declaration order (ints, doubles written with 17
-- significant digits so they read back as the same float, true/false), or {"error": "..."} for an event whose
-- state could not be read or written (one bad key never fails the other events).
local prefix, plan_id = ARGV[1], ARGV[3]
local plan = cjson.decode(ARGV[4])
local hashes, streams, distincts, defaults, tx_counts = plan.h, plan.e, plan.d, plan.z, plan.t
local record_ttl = string.format('%d', math.max(tonumber(ARGV[2]), plan.x))
local COUNT, SUM, MEAN, STD, DISTINCT, SEEN, FIRST, SINCE = 1, 2, 3, 4, 5, 6, 7, 8
-- A transaction id may come back with other content this many times before its variants stop being remembered.
local MAX_VARIANTS = 16
-- Entries older than the longest window no longer count (ranges bound by time); trimming them on about one
-- event in TRIM_EVERY (by event-time millisecond) keeps busy keys small at a fraction of the calls.
local TRIM_EVERY = 8
local HOUR_MS = 3600000

-- Numbers go to Redis as text formatted here: Lua's own conversion (concatenation, or a number passed to
-- redis.call) is printf's %.14g / %.17g, which took about a tenth of the script's instructions.
local format, call, tonumber = string.format, redis.call, tonumber
local function dbl(x) return format('%.17g', x) end

-- Every key lives at least its TTL after each event that touched it. Pushing an expiry out is a write, which
-- costs Redis as much as a write of the event's own; so it is pushed only once less than the TTL is left, and
-- then to the TTL plus an eighth (at most an hour): most events pay a read (PTTL) instead.
local function expire(key, ttl_ms)
  call('PEXPIRE', key, format('%d', ttl_ms + math.min(math.floor(ttl_ms / 8), HOUR_MS)))
end
local function keep_for(key, ttl_ms)
  if call('PTTL', key) < ttl_ms then expire(key, ttl_ms) end
end

local function finite(x)
  return x ~= nil and x == x and x ~= math.huge and x ~= -math.huge
end

for _, g in ipairs(hashes) do g.tag, g.suffix = '{' .. g[2] .. ':', '}:h' .. format('%d', g[3]) end
for _, g in ipairs(streams) do g.tag = '{' .. g[2] .. ':' end
for _, g in ipairs(distincts) do g.tag, g.suffix = '{' .. g[2] .. ':', '}:d:' .. g[4] end

-- A hash per entity and ttl: g = [by, by name, ttl_ms, statistic fields, [[of, of code, counts distinct], ...],
-- [[out, kind, of position], ...]]. Statistics: n (events), m and q (Welford's mean and m2 of the amount; k its
-- count where not n), s (sum), f and l (first and last event time), #<code> (distinct values of an `of`);
-- <code>:<value> marks a value seen. An aggregate declared later starts from the events after it, except
-- count_distinct, which counts the values its field's `seen` marked before.
-- What was read is kept in the group's own tables (g.st, g.present, g.marks) until the event is recorded.
local function hash_read(g, row, ts, vals)
  local value = row[g[1]]
  if value == '' then return false end
  local ofs, names, present, count = g[5], g.names, g.present, g.nstats
  for k = 1, #ofs do
    local v = row[ofs[k][1]]
    if v ~= '' then
      count = count + 1
      present[k] = ofs[k][2] .. ':' .. v
      names[count] = present[k]
    else
      present[k] = false
    end
  end
  if count == 0 then return false end
  local key = prefix .. g.tag .. value .. g.suffix
  local got = call('HMGET', key, unpack(names, 1, count))
  local st, marks, fresh = g.st, g.marks, true
  for i = 1, count do
    if got[i] then fresh = false; break end  -- a new key: its expiry is set without asking for it
  end
  -- Welford's count is n, or k once they differ (a mean declared after the count: it starts from nothing)
  local n, m, q, wn = tonumber(got[g.at_n]) or 0, tonumber(got[g.at_m]), tonumber(got[g.at_q]) or 0, nil
  st.has_k = got[g.at_k] or false
  if m then wn = tonumber(st.has_k) or n else m, wn = 0, 0 end
  if not (finite(n) and finite(m) and finite(q) and finite(wn)) or n < 0 or q < 0 or wn < 0 then
    n, m, q, wn = 0, 0, 0, 0  -- unreadable statistics (a corrupt or older key): start them again
  end
  local s, f, l = tonumber(got[g.at_s]) or 0, tonumber(got[g.at_f]), tonumber(got[g.at_l])
  if not finite(s) then s = 0 end
  st.key, st.fresh, st.n, st.m, st.q, st.wn, st.s, st.f, st.l = key, fresh, n, m, q, wn, s, f, l
  local at = g.nstats
  for k = 1, #ofs do
    if present[k] then
      at = at + 1
      marks[k] = got[at]
      if ofs[k][3] then  -- how many distinct values: #<code>, or counted once (declared after their seen)
        local count = tonumber(got[g.at_d[k]])
        st.repair[k] = not count
        if not count then
          count = 0
          local mark = ofs[k][2] .. ':'
          for _, field in ipairs(call('HKEYS', key)) do
            if string.sub(field, 1, #mark) == mark then count = count + 1 end
          end
        end
        st[k] = count
      end
    end
  end
  local aggs = g[6]
  for i = 1, #aggs do
    local a = aggs[i]
    local out, kind, k = a[1], a[2], a[3]
    if kind == COUNT then vals[out] = format('%d', n)
    elseif kind == MEAN then vals[out] = dbl(m)
    elseif kind == STD then
      if wn > 0 then vals[out] = dbl(math.sqrt(q / wn)) end
    elseif kind == SEEN then
      if present[k] then vals[out] = marks[k] and 'true' or 'false' end
    elseif kind == SUM then vals[out] = dbl(s)
    elseif kind == DISTINCT then
      if present[k] then vals[out] = format('%d', st[k]) end
    elseif kind == FIRST then
      if f then vals[out] = format('%d', math.max(0, ts - f)) end
    elseif l then vals[out] = format('%d', math.max(0, ts - l))  -- SINCE
    end
  end
  return true
end

local function hash_write(g, ts, amount)
  local st, update, u, has = g.st, g.update, 0, g.has
  if has.n then
    update[1] = 'n'; update[2] = format('%d', st.n + 1); u = 2
  end
  if has.m then
    local wn = st.wn + 1
    local delta = amount - st.m
    local m = st.m + delta / wn
    local q = st.q + delta * (amount - m)
    if finite(m) and finite(q) then
      update[u + 1] = 'm'; update[u + 2] = dbl(m); update[u + 3] = 'q'; update[u + 4] = dbl(q); u = u + 4
      if st.has_k or wn ~= st.n + 1 then update[u + 1] = 'k'; update[u + 2] = format('%d', wn); u = u + 2 end
    end
  end
  if has.s then
    local s = st.s + amount
    if finite(s) then update[u + 1] = 's'; update[u + 2] = dbl(s); u = u + 2 end
  end
  if has.f and not (st.f and st.f <= ts) then update[u + 1] = 'f'; update[u + 2] = format('%d', ts); u = u + 2 end
  if has.l and not (st.l and st.l >= ts) then update[u + 1] = 'l'; update[u + 2] = format('%d', ts); u = u + 2 end
  local ofs, present, marks = g[5], g.present, g.marks
  for k = 1, #ofs do
    if present[k] and not marks[k] then
      update[u + 1] = present[k]; update[u + 2] = '1'; u = u + 2
      if ofs[k][3] then update[u + 1] = '#' .. ofs[k][2]; update[u + 2] = format('%d', st[k] + 1); u = u + 2 end
    elseif present[k] and ofs[k][3] and st.repair[k] then
      update[u + 1] = '#' .. ofs[k][2]; update[u + 2] = format('%d', st[k]); u = u + 2
    end
  end
  if u > 0 then call('HSET', st.key, unpack(update, 1, u)) end
  if st.fresh then expire(st.key, g[3]) else keep_for(st.key, g[3]) end
end

-- A sorted set of the entity's events (tx|fingerprint, or tx|fingerprint=amount, by event time) for the windowed
-- count, sum, mean, std, first_seen_age and since_last: g = [by, by name, longest window, amounts, [[out, kind,
-- window], ...]]. Sum, mean and std run over the window's events in Redis' order (time, then member).
local function window_stats(key, low, at)
  local n, m, q, s = 0, 0, 0, 0
  for _, member in ipairs(call('ZRANGEBYSCORE', key, low, at)) do
    local x = tonumber(string.match(member, '=([^|=]*)$'))
    if x then
      n = n + 1
      local delta = x - m
      m = m + delta / n
      q = q + delta * (x - m)
      s = s + x
    end
  end
  return {n, m, q, s}
end

local function stream_read(g, row, ts, vals)
  local value = row[g[1]]
  if value == '' then return false end
  local key, at = prefix .. g.tag .. value .. '}:e', format('%d', ts)
  local windows, aggs = nil, g[5]
  for i = 1, #aggs do
    local a = aggs[i]
    local out, kind, w = a[1], a[2], a[3]
    local low = '(' .. format('%d', ts - w)
    if kind == COUNT then vals[out] = format('%d', call('ZCOUNT', key, low, at))
    elseif kind == SUM or kind == MEAN or kind == STD then
      windows = windows or {}
      local x = windows[w] or window_stats(key, low, at)
      windows[w] = x
      if kind == SUM then vals[out] = dbl(x[4])
      elseif kind == MEAN then vals[out] = dbl(x[2])
      elseif x[1] > 0 then vals[out] = dbl(math.sqrt(x[3] / x[1])) end
    elseif kind == FIRST then
      local r = call('ZRANGEBYSCORE', key, low, at, 'WITHSCORES', 'LIMIT', 0, 1)
      if r[2] then vals[out] = format('%d', ts - tonumber(r[2])) end
    elseif kind == SINCE then
      local r = call('ZREVRANGEBYSCORE', key, at, low, 'WITHSCORES', 'LIMIT', 0, 1)
      if r[2] then vals[out] = format('%d', ts - tonumber(r[2])) end
    end
  end
  g.key = key
  return true
end

local function stream_write(g, row, ts, amount)
  local key, member = g.key, row[1] .. '|' .. row[2]
  if g[4] then member = member .. '=' .. dbl(amount) end
  call('ZADD', key, format('%d', ts), member)
  if ts % TRIM_EVERY == 0 then call('ZREMRANGEBYSCORE', key, '-inf', format('%d', ts - g[3])) end
  keep_for(key, g[3])
end

-- A sorted set of the entity's `of` values by the last time seen, for the windowed count_distinct and seen:
-- g = [by, by name, of, of code, longest window, [[out, kind, window], ...] (count_distinct first)].
local function distinct_read(g, row, ts, vals)
  local value, of = row[g[1]], row[g[3]]
  if value == '' or of == '' then return false end
  local key, score, none_within, aggs = prefix .. g.tag .. value .. g.suffix, nil, 0, g[6]
  for i = 1, #aggs do
    local a = aggs[i]
    local out, kind, w = a[1], a[2], a[3]
    if kind == DISTINCT then
      local count = call('ZCOUNT', key, '(' .. format('%d', ts - w), '+inf')
      vals[out] = format('%d', count)
      if count == 0 and w > none_within then none_within = w end
    elseif w <= none_within then  -- SEEN: no value at all within a window at least as long
      vals[out] = 'false'
    else
      if score == nil then score = tonumber(call('ZSCORE', key, of)) or false end
      vals[out] = (score and score > ts - w) and 'true' or 'false'
    end
  end
  g.key = key
  return true
end

local function distinct_write(g, row, ts)
  local key = g.key
  call('ZADD', key, 'GT', format('%d', ts), row[g[3]])
  if ts % TRIM_EVERY == 0 then call('ZREMRANGEBYSCORE', key, '-inf', format('%d', ts - g[5])) end
  keep_for(key, g[5])
end

for _, g in ipairs(hashes) do
  g.has, g.names, g.nstats, g.st, g.present, g.marks, g.update, g.at_d = {}, {}, #g[4], {repair = {}}, {}, {}, {}, {}
  for i, name in ipairs(g[4]) do
    g.has[name] = true
    g.names[i] = name
    g['at_' .. name] = i  -- at_n, at_m, ...: where HMGET answers the statistic
  end
  for k, of in ipairs(g[5]) do
    if of[3] then g.at_d[k] = g['at_#' .. of[2]] end
  end
end
local n_hashes, n_streams, n_distincts, n_values = #hashes, #streams, #distincts, #defaults
local vals, read = {}, {}

-- The values before the event into `vals` (all reads first, so a key that cannot be read fails the event before
-- any write), what each group read into `read`; `variants`: the contents recorded before under the id.
local function aggregate(row, variants)
  local ts = row[3]
  for i = 1, n_values do vals[i] = defaults[i] end
  for i = 1, #tx_counts do vals[tx_counts[i]] = format('%d', variants) end
  for i = 1, n_hashes do read[i] = hash_read(hashes[i], row, ts, vals) end
  for i = 1, n_streams do read[n_hashes + i] = stream_read(streams[i], row, ts, vals) end
  local after = n_hashes + n_streams
  for i = 1, n_distincts do read[after + i] = distinct_read(distincts[i], row, ts, vals) end
  return '[' .. table.concat(vals, ',', 1, n_values) .. ']'
end

local function record(row)
  local ts, amount = row[3], row[4]
  for i = 1, n_hashes do
    if read[i] then hash_write(hashes[i], ts, amount) end
  end
  for i = 1, n_streams do
    if read[n_hashes + i] then stream_write(streams[i], row, ts, amount) end
  end
  local after = n_hashes + n_streams
  for i = 1, n_distincts do
    if read[after + i] then distinct_write(distincts[i], row, ts) end
  end
end

-- An id's first content is a string: its fingerprint (16 characters), the plan id (8), then the snapshot (one SET
-- with the TTL); more contents under the same id make it a hash of fingerprint -> plan id and snapshot. A count by
-- transaction_id is the number of contents it holds (so at most MAX_VARIANTS; the record then lives the longest
-- of the dedupe TTL and those counts' ttls).
local function observe(row)
  local tx, fp = row[1], row[2]
  if not finite(row[4]) or not finite(row[3]) then error('amount and timestamp must be finite numbers') end
  local tx_key = prefix .. '{transaction_id:' .. tx .. '}:dd'
  local first = redis.pcall('GET', tx_key)  -- false: new; a table: not a string (WRONGTYPE), so a hash
  local seen = {}  -- fingerprint, plan id .. snapshot, ... (at most MAX_VARIANTS pairs)
  if type(first) == 'string' then
    seen = {string.sub(first, 1, 16), string.sub(first, 17)}
  elseif first then
    seen = call('HGETALL', tx_key)
  end
  local variants = #seen / 2
  for k = 1, #seen, 2 do
    if seen[k] == fp then
      local known = seen[k + 1]
      if string.sub(known, 1, 8) == plan_id then return string.sub(known, 9) end
      -- judged before the aggregates changed: the values now (this content not counted), not recorded again
      return aggregate(row, variants - 1)
    end
  end
  local snapshot = aggregate(row, variants)
  if variants == 0 then
    call('SET', tx_key, fp .. plan_id .. snapshot, 'EX', record_ttl)
  elseif variants < MAX_VARIANTS then
    if type(first) == 'string' then  -- the second content: the string becomes a hash of both
      call('DEL', tx_key)
      call('HSET', tx_key, seen[1], seen[2])
    end
    call('HSET', tx_key, fp, plan_id .. snapshot)
    call('EXPIRE', tx_key, record_ttl)
  end
  record(row)
  return snapshot
end

local out = {}
for i, row in ipairs(cjson.decode(ARGV[5])) do
  local ok, result = pcall(observe, row)
  if ok then
    out[i] = result
  else
    if type(result) == 'table' then result = result.err end  -- a redis.call error
    out[i] = cjson.encode({error = tostring(result)})
  end
end
return '[' .. table.concat(out, ',') .. ']'
