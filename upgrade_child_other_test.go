//go:build !linux

package udppool

// runUpgradeChild: the upgrade tests run on Linux only.
func runUpgradeChild() bool { return false }
