package fsm

// WaiterIndex is the position of id in the mutex's line, -1 when it is not
// waiting.
func (m *Mutex) WaiterIndex(id string) int { return m.waiterIndex(id) }
