//go:build chaosbug_lockignoreslease

package inproc

const plantedBug = "lockignoreslease"
