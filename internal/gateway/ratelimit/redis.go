package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// slidingWindow runs the whole check in Redis, atomically: read the two
// windows' counts, decide, count. The clock is Redis's own (TIME), so
// replicas with skewed clocks still share one window. One hash per key
// holds both windows (fields named by window index), so the script
// touches one key, as Redis Cluster requires; it expires two windows
// after its last use.
var slidingWindow = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local idx = math.floor(now / window)
local elapsed = now - idx * window
local fcur = string.format('%d', idx)
local fprev = string.format('%d', idx - 1)
local cur = tonumber(redis.call('HGET', KEYS[1], fcur) or '0')
local prev = tonumber(redis.call('HGET', KEYS[1], fprev) or '0')
local est = prev * (window - elapsed) / window + cur
local allowed = 0
if est + 1 <= limit then
  redis.call('HINCRBY', KEYS[1], fcur, 1)
  allowed = 1
  if redis.call('HLEN', KEYS[1]) > 2 then
    for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
      if f ~= fcur and f ~= fprev then redis.call('HDEL', KEYS[1], f) end
    end
  end
end
redis.call('PEXPIRE', KEYS[1], window * 2)
return {allowed, prev, cur, elapsed}
`)

// Redis is a Store shared by every gateway replica pointed at the same
// Redis. Requests fail fast when Redis is unreachable (short timeouts, no
// retries): the caller fails open or closed as configured.
type Redis struct {
	c      *redis.Client
	prefix string
}

// quietRedis silences go-redis's own logger: a store failure is logged by
// the gateway, once per limit per 10 s, not once per request.
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

var quietOnce sync.Once

// NewRedis connects lazily to the redis:// (or rediss://) URL. prefix
// namespaces the keys ("moatless:rl:").
func NewRedis(url, prefix string) (*Redis, error) {
	quietOnce.Do(func() { redis.SetLogger(quietRedis{}) })
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("ratelimit: store %q: %w", url, err)
	}
	opt.DialTimeout = 250 * time.Millisecond
	opt.ReadTimeout = 250 * time.Millisecond
	opt.WriteTimeout = 250 * time.Millisecond
	opt.MaxRetries = -1 // no retries: a dead Redis must not stall requests
	opt.PoolTimeout = 250 * time.Millisecond
	opt.DisableIdentity = true
	return &Redis{c: redis.NewClient(opt), prefix: prefix}, nil
}

// Take implements Store.
func (r *Redis) Take(ctx context.Context, key string, limit int64, window time.Duration) (Result, error) {
	ms := window.Milliseconds()
	v, err := slidingWindow.Run(ctx, r.c, []string{r.prefix + key}, limit, ms).Int64Slice()
	if err != nil {
		return Result{}, fmt.Errorf("ratelimit: redis: %w", err)
	}
	if len(v) != 4 {
		return Result{}, errors.New("ratelimit: redis: unexpected script answer")
	}
	allowed, prev, cur, elapsed := v[0] == 1, v[1], v[2], time.Duration(v[3])*time.Millisecond
	res := decide(prev, cur, elapsed, window, limit)
	// Redis decided; the arithmetic above only fills in the numbers. They
	// agree unless the limit changed under a concurrent replica.
	res.Allowed = allowed
	if !allowed && res.RetryAfter == 0 {
		res.RetryAfter = window - elapsed
	}
	return res, nil
}

// Close closes the connection pool.
func (r *Redis) Close() error { return r.c.Close() }
