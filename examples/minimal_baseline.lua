local c = redis.call('INCRBY', KEYS[1], ARGV[1])
local t
if c == tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) t = tonumber(ARGV[2]) else t = redis.call('PTTL', KEYS[1]) end
return {c, t}
