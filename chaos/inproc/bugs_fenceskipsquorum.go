//go:build chaosbug_fenceskipsquorum

package inproc

const plantedBug = "fenceskipsquorum"
