package udppool

// WithSupervisor(false) keeps NewUpgrader from turning PID 1 of a PID
// namespace into a supervisor (see NewUpgrader): for a process whose own
// init already does that job and follows the main process by the notify
// protocol. On by default.
func WithSupervisor(on bool) UpgradeOption {
	return func(o *upgradeOptions) { o.noSupervisor = !on }
}
