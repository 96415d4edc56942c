//go:build !linux

package main

import "syscall"

// childAttr has nothing to add here: a client whose parent dies ends with
// its window, which is bounded.
func childAttr() *syscall.SysProcAttr { return nil }
