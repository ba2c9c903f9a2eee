//go:build !chaosbug_lockignoreslease && !chaosbug_readskipsleader && !chaosbug_leaselocalclock && !chaosbug_fenceskipsquorum

package inproc

// plantedBug names the bug switch this build carries ("" for none): with
// one, a campaign must report anomalies; without, none.
const plantedBug = ""
