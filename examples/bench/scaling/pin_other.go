//go:build !linux

package main

import (
	"errors"
	"runtime"
)

// allowedCPUs returns runtime.NumCPU() CPUs, numbered from 0: the program
// does not know which ones here.
func allowedCPUs() ([]int, error) {
	cpus := make([]int, runtime.NumCPU())
	for i := range cpus {
		cpus[i] = i
	}
	return cpus, nil
}

// pin is not available here: server and client share the CPUs.
func pin([]int) error { return errors.ErrUnsupported }
