//go:build !unix

package main

import "time"

// cpuTime returns zero where the process's CPU time is not known here;
// the CPU columns are then left empty.
func cpuTime() time.Duration { return 0 }
