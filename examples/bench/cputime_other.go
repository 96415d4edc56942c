//go:build !unix

package main

import "time"

// cpuTime returns zero where the process's CPU time is not known here; the
// CPU columns and ratios are then left out.
func cpuTime() time.Duration { return 0 }
