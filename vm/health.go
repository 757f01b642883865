package vm

// HealthReporter is the optional driver capability of telling whether a running VM's guest
// shows signs of running.
type HealthReporter interface {
	// Health is a warning about VM id's guest, empty when all is well.
	Health(id ID) string
}

// Health is a warning about a started VM's guest when it shows no sign of running (its
// driver's HealthReporter), empty when all is well or the driver cannot tell.
func (m *Manager) Health(id ID) string {
	if hr, ok := m.drv.(HealthReporter); ok {
		return hr.Health(id)
	}
	return ""
}
