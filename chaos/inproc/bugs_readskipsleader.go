//go:build chaosbug_readskipsleader

package inproc

const plantedBug = "readskipsleader"
