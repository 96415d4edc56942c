// Package systemdtest boots a real systemd for a test: systemd as PID 1 of
// PID, mount, UTS and cgroup namespaces of its own, with the test's units,
// so that a test can run a service the way an operator deploys it
// (systemctl start, reload, stop) without touching the host's services.
//
// It is for tests only (imported from _test.go files). Boot needs Linux,
// root, /lib/systemd/systemd, unshare and nsenter, and a cgroup2 hierarchy;
// where one is missing, or the kernel refuses the namespaces, it skips the
// test with the reason.
//
// The recipe (measured with systemd 252 on hosts whose PID 1 is not
// systemd): a child of the test joins a cgroup of its own under the cgroup2
// mount and enters new namespaces with private mount propagation; there,
// before systemd starts, a tmpfs goes on /run (the test's units go to
// /run/systemd/system), a cgroup2 view rooted at that cgroup on
// /sys/fs/cgroup, and a file of the test on /dev/console, so that nothing
// systemd writes to a console reaches the host's.
// Every unit must have DefaultDependencies=no: otherwise the usual boot
// targets would run udev, sysctl, tmpfiles and swap against the shared
// host, so Boot refuses units without it. Teardown is SIGKILL to systemd,
// which ends every process of its PID namespace; never a poweroff, whose
// shutdown step may remount file systems shared with the host. Cleanup then
// removes the cgroups and checks that no process of the namespace is left
// and that the test's mount table is as it was.
package systemdtest
