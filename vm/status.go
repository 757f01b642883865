package vm

import (
	"fmt"
	"strings"
)

// Status is where a VM is in its life as the marketplace sees it (the report's vmstatus). It is
// the desired, agreed status; what the hypervisor observes is a PowerState.
type Status uint8

// The statuses of the report's statusrelations table, plus StatusDeleted for a VM whose lease
// ended. The zero Status is invalid so that a forgotten field never reads as a real status.
const (
	StatusRegistered Status = iota + 1 // configured by a buyer, not yet on a provider
	StatusStored                       // created on a provider, never started there
	StatusStarted                      // running
	StatusStopped                      // powered off after running
	StatusSuspended                    // memory state saved to disk, not running
	StatusMigrating                    // files moving to another provider; see State.Prior
	StatusDeleted                      // gone; no action is legal
)

var statusNames = [...]string{
	StatusRegistered: "registered",
	StatusStored:     "stored",
	StatusStarted:    "started",
	StatusStopped:    "stopped",
	StatusSuspended:  "suspended",
	StatusMigrating:  "migrating",
	StatusDeleted:    "deleted",
}

// Statuses lists every valid status in table order.
func Statuses() []Status {
	return []Status{StatusRegistered, StatusStored, StatusStarted, StatusStopped, StatusSuspended, StatusMigrating, StatusDeleted}
}

// Valid reports whether s is one of the defined statuses.
func (s Status) Valid() bool { return s > 0 && int(s) < len(statusNames) }

// String returns the report's name of the status ("started").
func (s Status) String() string {
	if !s.Valid() {
		return fmt.Sprintf("status(%d)", uint8(s))
	}
	return statusNames[s]
}

// ParseStatus parses a status name as String writes it (case and surrounding space ignored).
func ParseStatus(text string) (Status, error) {
	name := strings.ToLower(strings.TrimSpace(text))
	for s := StatusRegistered; s.Valid(); s++ {
		if statusNames[s] == name {
			return s, nil
		}
	}
	return 0, fmt.Errorf("%w: %q", ErrUnknownStatus, truncate(text))
}

// MarshalText writes the status name; the zero Status marshals as "" so that it can be omitted.
func (s Status) MarshalText() ([]byte, error) {
	if s == 0 {
		return []byte{}, nil
	}
	if !s.Valid() {
		return nil, fmt.Errorf("%w: %d", ErrUnknownStatus, uint8(s))
	}
	return []byte(s.String()), nil
}

// UnmarshalText parses a status name; "" is the zero Status.
func (s *Status) UnmarshalText(text []byte) error {
	if len(text) == 0 {
		*s = 0
		return nil
	}
	v, err := ParseStatus(string(text))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// Action is something a user or the system asks of a VM (a relation of the statusrelations
// table). Each action's report name is also the name of the command that performs it.
type Action uint8

// Actions of the report's table, then the ones the system itself issues when an operation
// completes (Internal reports which).
const (
	ActionSearchProvider  Action = iota + 1 // searchprovider: look for a provider to store on
	ActionEdit                              // editregistrationinfo: change the configuration
	ActionStart                             // startmachine
	ActionStop                              // stopmachine
	ActionView                              // viewmachine: open the console
	ActionSuspend                           // suspendmachine
	ActionResume                            // resumemachine
	ActionMigrate                           // migrate: move to another provider
	ActionMigrationStatus                   // migrationstatus: ask how a migration goes
	ActionDelete                            // deletemachine: end the lease, remove the files
	// Issued by the system, not by a user.
	ActionStore           // store: the VM was created on a provider
	ActionMigrationDone   // migrationdone: the destination committed; back to the prior status
	ActionMigrationFailed // migrationfailed: the move was abandoned; back to the prior status
)

var actionNames = [...]string{
	ActionSearchProvider:  "searchprovider",
	ActionEdit:            "editregistrationinfo",
	ActionStart:           "startmachine",
	ActionStop:            "stopmachine",
	ActionView:            "viewmachine",
	ActionSuspend:         "suspendmachine",
	ActionResume:          "resumemachine",
	ActionMigrate:         "migrate",
	ActionMigrationStatus: "migrationstatus",
	ActionDelete:          "deletemachine",
	ActionStore:           "store",
	ActionMigrationDone:   "migrationdone",
	ActionMigrationFailed: "migrationfailed",
}

// actionVerbs are the actions' short forms, the CLI's words ("virtuoso vm start ID"): what
// a user types and what messages to users say.
var actionVerbs = [...]string{
	ActionSearchProvider:  "search",
	ActionEdit:            "edit",
	ActionStart:           "start",
	ActionStop:            "stop",
	ActionView:            "console",
	ActionSuspend:         "suspend",
	ActionResume:          "resume",
	ActionMigrate:         "migrate",
	ActionMigrationStatus: "migration-status",
	ActionDelete:          "rm",
	ActionStore:           "store",
	ActionMigrationDone:   "migration-done",
	ActionMigrationFailed: "migration-failed",
}

// actionAliases are further short forms accepted from users.
var actionAliases = map[string]Action{"view": ActionView, "delete": ActionDelete}

// AllActions lists every valid action in declaration order.
func AllActions() []Action {
	out := make([]Action, 0, len(actionNames)-1)
	for a := ActionSearchProvider; a.Valid(); a++ {
		out = append(out, a)
	}
	return out
}

// Valid reports whether a is one of the defined actions.
func (a Action) Valid() bool { return a > 0 && int(a) < len(actionNames) }

// Internal reports whether the action is issued by the system when an operation completes
// rather than requested by a user; user interfaces do not offer it.
func (a Action) Internal() bool {
	return a == ActionStore || a == ActionMigrationDone || a == ActionMigrationFailed
}

// String returns the report's name of the action ("suspendmachine").
func (a Action) String() string {
	if !a.Valid() {
		return fmt.Sprintf("action(%d)", uint8(a))
	}
	return actionNames[a]
}

// Verb is the action's short form, the word of the CLI command that performs it ("start",
// "console", "rm"): what messages to users say.
func (a Action) Verb() string {
	if !a.Valid() {
		return a.String()
	}
	return actionVerbs[a]
}

// ParseAction parses an action name as String writes it, or its Verb ("start", "console",
// "rm", ...), or "view" or "delete". Case and surrounding space are ignored. An unknown name
// gives an *UnknownActionError.
func ParseAction(text string) (Action, error) {
	name := strings.ToLower(strings.TrimSpace(text))
	for a := ActionSearchProvider; a.Valid(); a++ {
		if actionNames[a] == name || actionVerbs[a] == name {
			return a, nil
		}
	}
	if a, ok := actionAliases[name]; ok {
		return a, nil
	}
	return 0, &UnknownActionError{Name: truncate(text)}
}

// MarshalText writes the action's report name.
func (a Action) MarshalText() ([]byte, error) {
	if !a.Valid() {
		return nil, &UnknownActionError{Name: a.String()}
	}
	return []byte(a.String()), nil
}

// UnmarshalText parses an action as ParseAction does.
func (a *Action) UnmarshalText(text []byte) error {
	v, err := ParseAction(string(text))
	if err != nil {
		return err
	}
	*a = v
	return nil
}

// UnknownActionError is returned for a name that is no action. errors.Is(err, ErrUnknownAction).
type UnknownActionError struct {
	Name string
}

func (e *UnknownActionError) Error() string {
	return fmt.Sprintf("unknown action %q", e.Name)
}

// Is makes errors.Is(err, ErrUnknownAction) true.
func (e *UnknownActionError) Is(target error) bool { return target == ErrUnknownAction }

// IllegalActionError is returned when the VM's status does not allow the action.
// errors.Is(err, ErrIllegalAction).
type IllegalActionError struct {
	Status Status
	Action Action
}

func (e *IllegalActionError) Error() string {
	return fmt.Sprintf("cannot %s: the vm is %s (possible now: %s)", e.Action.Verb(), e.Status, joinActions(Actions(e.Status)))
}

// Is makes errors.Is(err, ErrIllegalAction) true.
func (e *IllegalActionError) Is(target error) bool { return target == ErrIllegalAction }

// relation is one row of the status table: in status From, action Action leads to To.
// To == From means the action does not change the status (viewing, searching).
// To == statusPrior means "back to the status before migrating".
type relation struct {
	From, To Status
	Action   Action
}

// statusPrior is a marker in the table, never a real status.
const statusPrior Status = 255

// relations is the statusrelations table (report §6.1.7), extended with deletion and the
// completion actions of storing and migrating.
var relations = [...]relation{
	{StatusRegistered, StatusRegistered, ActionSearchProvider},
	{StatusRegistered, StatusRegistered, ActionEdit},
	{StatusRegistered, StatusStored, ActionStore},
	{StatusRegistered, StatusDeleted, ActionDelete},

	{StatusStarted, StatusStopped, ActionStop},
	{StatusStarted, StatusStarted, ActionView},
	{StatusStarted, StatusSuspended, ActionSuspend},

	{StatusStopped, StatusStarted, ActionStart},
	{StatusStopped, StatusMigrating, ActionMigrate},
	{StatusStopped, StatusDeleted, ActionDelete},

	{StatusStored, StatusStarted, ActionStart},
	{StatusStored, StatusMigrating, ActionMigrate},
	{StatusStored, StatusDeleted, ActionDelete},

	{StatusSuspended, StatusStarted, ActionResume},
	{StatusSuspended, StatusMigrating, ActionMigrate},
	{StatusSuspended, StatusDeleted, ActionDelete},

	{StatusMigrating, StatusMigrating, ActionMigrationStatus},
	{StatusMigrating, statusPrior, ActionMigrationDone},
	{StatusMigrating, statusPrior, ActionMigrationFailed},
}

func lookup(s Status, a Action) (relation, bool) {
	for _, r := range relations {
		if r.From == s && r.Action == a {
			return r, true
		}
	}
	return relation{}, false
}

// Allowed reports whether action a is legal in status s.
func Allowed(s Status, a Action) bool {
	_, ok := lookup(s, a)
	return ok
}

// Actions returns the user actions legal in status s, in table order: what a user interface
// offers as buttons. Internal actions are left out.
func Actions(s Status) []Action {
	var out []Action
	for _, r := range relations {
		if r.From == s && !r.Action.Internal() {
			out = append(out, r.Action)
		}
	}
	return out
}

// Changes reports whether action a, legal in status s, changes the status (and so the version).
func Changes(s Status, a Action) bool {
	r, ok := lookup(s, a)
	return ok && r.To != r.From
}

// State is a VM's status with its version. Every status change increments Version by one
// (report §7.1.5), so two parties that agree on the version agree on the status.
type State struct {
	Status  Status `json:"status"`
	Version uint64 `json:"version"`
	// Prior is, while Status is StatusMigrating, the status the VM returns to when the
	// migration completes or fails. Zero otherwise.
	Prior Status `json:"prior,omitempty"`
}

// Apply returns the state after action a, or an *IllegalActionError if the status does not allow
// it. Actions that do not change the status return the state unchanged.
func (st State) Apply(a Action) (State, error) {
	r, ok := lookup(st.Status, a)
	if !ok {
		return st, &IllegalActionError{Status: st.Status, Action: a}
	}
	if r.To == r.From {
		return st, nil
	}
	next := State{Status: r.To, Version: st.Version + 1}
	switch {
	case r.To == StatusMigrating:
		next.Prior = st.Status
	case r.To == statusPrior:
		if !st.Prior.Valid() || st.Prior == StatusMigrating {
			return st, fmt.Errorf("%w: migrating vm has no prior status", ErrIllegalAction)
		}
		next.Status = st.Prior
	}
	return next, nil
}

func joinActions(as []Action) string {
	if len(as) == 0 {
		return "none"
	}
	names := make([]string, len(as))
	for i, a := range as {
		names[i] = a.Verb()
	}
	return strings.Join(names, ", ")
}

// truncate keeps error messages about untrusted names short.
func truncate(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}
