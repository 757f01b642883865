// Package failpoint stops the process with SIGKILL at a named point of a protocol when its
// environment asks for it (VIRTUOSO_FAILPOINT=NAME): fault tests kill a node at exactly the
// step that matters, as a crash or a power cut would, and check what is left. Without the
// variable, Here does nothing.
package failpoint

import (
	"os"
	"syscall"
)

// Env is the environment variable that names the point to die at.
const Env = "VIRTUOSO_FAILPOINT"

var armed = os.Getenv(Env)

// Here kills the process if it was started with VIRTUOSO_FAILPOINT=name.
func Here(name string) {
	if armed == "" || armed != name {
		return
	}
	os.Stderr.WriteString("failpoint " + name + ": SIGKILL\n")
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way
}
