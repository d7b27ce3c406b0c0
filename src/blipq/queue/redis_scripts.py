"""Lua scripts for the Redis queue. Each runs atomically in Redis, which is what makes claims exclusive
and outcomes idempotent across any number of API nodes and workers.

Keys (prefix `p`):
  p:seq              counter ordering jobs
  p:jobs             zset job id -> seq (listing)
  p:job:<id>         hash: status options okey n_images n_finished created_at started_at finished_at seq
                           owner idem (the key of its idempotency record, or '')
  p:idem:<owner>:<k> hash: job fingerprint (an Idempotency-Key; expires with its job)
  p:img:<id>         hash: "<i>:state" "<i>:caption" "<i>:code" "<i>:message" "<i>:attempts" "<i>:token"
                           "<i>:entry" (stream entry id) "<i>:url"
  p:data:<id>        hash: "<i>" -> image bytes, deleted once the image has an outcome
  p:stream:<okey>    stream of claimable images sharing one set of options, consumer group "workers"
  p:streams          zset okey -> seq of its first job (claim order across option sets)
  p:leases           zset "<id>:<i>" -> lease deadline (unix time)
  p:finished         zset job id -> finished_at (purge)
  p:workers          hash worker id -> json heartbeat
Channels: p:finished (job id, when a job finishes), p:work (when a job is enqueued).
"""

from __future__ import annotations

_COMMON = """
local p = ARGV[1]
local now = tonumber(ARGV[2])
local function job_key(job) return p .. ':job:' .. job end
local function img_key(job) return p .. ':img:' .. job end
local function terminal(status) return status == 'succeeded' or status == 'failed' or status == 'cancelled' end

local function close_job(job, status)
  redis.call('HSET', job_key(job), 'status', status, 'finished_at', ARGV[2])
  redis.call('ZADD', p .. ':finished', now, job)
  local ttl = tonumber(ARGV[3])
  if ttl > 0 then
    for _, key in ipairs({job_key(job), img_key(job), p .. ':data:' .. job}) do redis.call('EXPIRE', key, ttl) end
    local idem_key = redis.call('HGET', job_key(job), 'idem')
    if idem_key and idem_key ~= '' then redis.call('EXPIRE', idem_key, ttl) end
  end
  redis.call('PUBLISH', p .. ':finished', job)
end

local function drop_entry(job, idx)
  local okey = redis.call('HGET', job_key(job), 'okey')
  local entry = redis.call('HGET', img_key(job), idx .. ':entry')
  if okey and entry then
    local stream = p .. ':stream:' .. okey
    redis.call('XACK', stream, 'workers', entry)
    redis.call('XDEL', stream, entry)
  end
  redis.call('ZREM', p .. ':leases', job .. ':' .. idx)
  redis.call('HDEL', p .. ':data:' .. job, idx)
end

-- 0: the image already had an outcome; 1: recorded; 2: recorded and the job is now finished
local function finish_image(job, idx, state, caption, code, message)
  local img = img_key(job)
  local current = redis.call('HGET', img, idx .. ':state')
  if current ~= 'queued' and current ~= 'running' then return 0 end
  redis.call('HSET', img, idx .. ':state', state)
  if caption then redis.call('HSET', img, idx .. ':caption', caption) end
  if code then redis.call('HSET', img, idx .. ':code', code, idx .. ':message', message) end
  drop_entry(job, idx)
  local finished_count = redis.call('HINCRBY', job_key(job), 'n_finished', 1)
  local fields = redis.call('HMGET', job_key(job), 'n_images', 'status')
  local n_images = tonumber(fields[1])
  if finished_count < n_images or terminal(fields[2]) then return 1 end
  local any_done = false
  for i = 0, n_images - 1 do
    if redis.call('HGET', img, i .. ':state') == 'done' then any_done = true break end
  end
  close_job(job, any_done and 'succeeded' or 'failed')
  return 2
end
"""

# ARGV: prefix now ttl job options okey n owner idem_key fingerprint [kind payload]*n  (kind: data | url)
# owner and idem_key are '' when absent. Returns {'new', job} or {'same', job} or {'conflict', job}.
ENQUEUE = (
    _COMMON
    + """
local job, options, okey, n = ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
local owner, idem, fingerprint = ARGV[8], ARGV[9], ARGV[10]
local idem_key = ''
if idem ~= '' then
  idem_key = p .. ':idem:' .. owner .. ':' .. idem
  local previous = redis.call('HMGET', idem_key, 'job', 'fingerprint')
  if previous[1] then
    return {previous[2] == fingerprint and 'same' or 'conflict', previous[1]}
  end
  redis.call('HSET', idem_key, 'job', job, 'fingerprint', fingerprint)
end
local seq = redis.call('INCR', p .. ':seq')
redis.call('HSET', job_key(job), 'status', 'queued', 'options', options, 'okey', okey, 'n_images', n,
           'n_finished', 0, 'created_at', ARGV[2], 'seq', seq, 'owner', owner, 'idem', idem_key)
redis.call('ZADD', p .. ':jobs', seq, job)
local stream = p .. ':stream:' .. okey
redis.call('ZADD', p .. ':streams', 'NX', seq, okey)
redis.pcall('XGROUP', 'CREATE', stream, 'workers', '0', 'MKSTREAM')
local img = img_key(job)
for i = 0, n - 1 do
  local kind, payload = ARGV[11 + 2 * i], ARGV[12 + 2 * i]
  if kind == 'url' then
    redis.call('HSET', img, i .. ':url', payload)
  else
    redis.call('HSET', p .. ':data:' .. job, i, payload)
  end
  local entry = redis.call('XADD', stream, '*', 'job', job, 'idx', i)
  redis.call('HSET', img, i .. ':state', 'queued', i .. ':attempts', 0, i .. ':entry', entry)
end
redis.call('PUBLISH', p .. ':work', job)
return {'new', job}
"""
)

# ARGV: prefix now ttl lease_until max_images max_attempts consumer wanted_okey token
# Returns {okey, {{job, idx, attempts}...}, {finished job ids}}
CLAIM = (
    _COMMON
    + """
local lease_until, n, max_attempts = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local consumer, chosen, token = ARGV[7], ARGV[8], ARGV[9]
local claimed, finished = {}, {}

local function take(job, idx)
  local img = img_key(job)
  local attempts = redis.call('HINCRBY', img, idx .. ':attempts', 1)
  redis.call('HSET', img, idx .. ':state', 'running', idx .. ':token', token)
  redis.call('ZADD', p .. ':leases', lease_until, job .. ':' .. idx)
  if redis.call('HGET', job_key(job), 'status') == 'queued' then
    redis.call('HSET', job_key(job), 'status', 'running', 'started_at', ARGV[2])
  end
  table.insert(claimed, {job, idx, attempts})
end

-- Expired leases first: their worker stopped renewing them.
for _, member in ipairs(redis.call('ZRANGEBYSCORE', p .. ':leases', '-inf', now)) do
  local sep = string.find(member, ':', 1, true)
  local job, idx = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
  local img = img_key(job)
  if redis.call('HGET', img, idx .. ':state') ~= 'running' then
    redis.call('ZREM', p .. ':leases', member)
  else
    local attempts = tonumber(redis.call('HGET', img, idx .. ':attempts'))
    if attempts >= max_attempts then
      local message = 'the worker captioning this image stopped ' .. attempts .. ' times; giving up'
      if finish_image(job, idx, 'failed', false, 'worker_lost', message) == 2 then table.insert(finished, job) end
    elseif #claimed < n then
      local okey = redis.call('HGET', job_key(job), 'okey')
      if chosen == '' or chosen == okey then
        chosen = okey
        local entry = redis.call('HGET', img, idx .. ':entry')
        redis.call('XCLAIM', p .. ':stream:' .. okey, 'workers', consumer, 0, entry, 'JUSTID')
        take(job, idx)
      end
    end
  end
end

-- Then new images, from the oldest option set that has any (or the one asked for).
if #claimed < n then
  local okeys = (chosen ~= '') and {chosen} or redis.call('ZRANGE', p .. ':streams', 0, -1)
  for _, okey in ipairs(okeys) do
    local stream = p .. ':stream:' .. okey
    if redis.call('EXISTS', stream) == 0 then break end
    repeat
      local reply = redis.call('XREADGROUP', 'GROUP', 'workers', consumer, 'COUNT', n - #claimed,
                               'STREAMS', stream, '>')
      if reply then
        for _, item in ipairs(reply[1][2]) do
          local job, idx = item[2][2], item[2][4]
          if redis.call('HGET', img_key(job), idx .. ':state') == 'queued' then
            take(job, idx)
            chosen = okey
          else  -- cancelled while queued
            redis.call('XACK', stream, 'workers', item[1])
            redis.call('XDEL', stream, item[1])
          end
        end
      end
    until (not reply) or #claimed >= n
    if redis.call('XLEN', stream) == 0 then  -- nothing queued or held: forget this option set
      redis.call('DEL', stream)
      redis.call('ZREM', p .. ':streams', okey)
    end
    if #claimed > 0 then break end
  end
end
return {chosen, claimed, finished}
"""
)

# ARGV: prefix now ttl job idx state caption code message  (caption for 'done', code+message for 'failed')
RECORD = (
    _COMMON
    + """
local state = ARGV[6]
local caption = (state == 'done') and ARGV[7] or false
local code = (state ~= 'done') and ARGV[8] or false
return finish_image(ARGV[4], ARGV[5], state, caption, code, ARGV[9])
"""
)

# ARGV: prefix now ttl job.  Returns 0 when the job does not exist.
CANCEL = (
    _COMMON
    + """
local job = ARGV[4]
local fields = redis.call('HMGET', job_key(job), 'status', 'n_images')
if not fields[1] then return 0 end
if terminal(fields[1]) then return 1 end
for i = 0, tonumber(fields[2]) - 1 do
  local state = redis.call('HGET', img_key(job), i .. ':state')
  if state == 'queued' or state == 'running' then
    redis.call('HSET', img_key(job), i .. ':state', 'cancelled')
    drop_entry(job, i)
  end
end
close_job(job, 'cancelled')
return 1
"""
)

# ARGV: prefix now ttl lease_until [job idx token]*
RENEW = (
    _COMMON
    + """
for i = 5, #ARGV, 3 do
  local job, idx, token = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local img = img_key(job)
  if redis.call('HGET', img, idx .. ':token') == token and redis.call('HGET', img, idx .. ':state') == 'running' then
    redis.call('ZADD', p .. ':leases', 'XX', ARGV[4], job .. ':' .. idx)
  end
end
return 0
"""
)
