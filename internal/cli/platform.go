package cli

// linuxOnly is dataplane.Env.LinuxOnly: the long-running commands run on
// Linux only.
func (e *Env) linuxOnly(name string) (int, bool) { return e.dp().LinuxOnly(name) }
