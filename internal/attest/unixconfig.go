package attest

// Selector type and value prefixes the unix attestor produces. They are
// SPIRE's unix workload attestor names, so entries written for SPIRE read
// the same here.
const (
	SelectorType = "unix"
)

// Defaults of UnixConfig.
const (
	DefaultProcRoot      = "/proc"
	DefaultMaxBinarySize = 256 << 20
	defaultHashCacheSize = 4096
	maxProcFileSize      = 64 << 10
)

// UnixConfig configures the unix attestor. The zero value is ready to use.
type UnixConfig struct {
	// ProcRoot is where procfs is mounted. Default "/proc".
	ProcRoot string
	// MaxBinarySize bounds how many bytes of a caller's binary are hashed.
	// A larger binary gets no unix:sha256 selector (so entries that
	// require one never match it) rather than stalling the agent. Default
	// 256 MiB.
	MaxBinarySize int64
	// SkipNames leaves out unix:user, unix:group and
	// unix:supplementary_group (name look-ups read /etc/passwd and
	// /etc/group on every call).
	SkipNames bool
}
