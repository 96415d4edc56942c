//go:build linux

package main

import (
	"errors"
	"os"
	"runtime"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// allowedCPUs returns the CPUs this process may run on.
func allowedCPUs() ([]int, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, err
	}
	var cpus []int
	for c := range 1024 {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	return cpus, nil
}

// pin confines the whole process to cpus and sets GOMAXPROCS to match.
// sched_setaffinity acts on one thread, and a thread inherits the mask of
// the thread that makes it, so every thread the process has is pinned, and
// again until a pass finds none that is not: a thread made during a pass
// by a thread not yet pinned shows up in the next one.
func pin(cpus []int) error {
	var want unix.CPUSet
	for _, c := range cpus {
		want.Set(c)
	}
	for range 20 {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return err
		}
		changed := false
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			var cur unix.CPUSet
			if unix.SchedGetaffinity(tid, &cur) == nil && cur == want {
				continue
			}
			if err := unix.SchedSetaffinity(tid, &want); err != nil && !errors.Is(err, syscall.ESRCH) {
				return err
			}
			changed = true
		}
		if !changed {
			runtime.GOMAXPROCS(len(cpus))
			return nil
		}
	}
	return errors.New("threads kept appearing unpinned")
}
