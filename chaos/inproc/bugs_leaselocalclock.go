//go:build chaosbug_leaselocalclock

package inproc

const plantedBug = "leaselocalclock"
