package vm

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
)

// want is the report's table written out independently of the implementation's: for each
// status, each legal action and the status it leads to ("=" means unchanged, "prior" back to the
// status before migrating).
var want = map[Status]map[Action]string{
	StatusRegistered: {ActionSearchProvider: "=", ActionEdit: "=", ActionStore: "stored", ActionDelete: "deleted"},
	StatusStarted:    {ActionStop: "stopped", ActionView: "=", ActionSuspend: "suspended"},
	StatusStopped:    {ActionStart: "started", ActionMigrate: "migrating", ActionDelete: "deleted"},
	StatusStored:     {ActionStart: "started", ActionMigrate: "migrating", ActionDelete: "deleted"},
	StatusSuspended:  {ActionResume: "started", ActionMigrate: "migrating", ActionDelete: "deleted"},
	StatusMigrating:  {ActionMigrationStatus: "=", ActionMigrationDone: "prior", ActionMigrationFailed: "prior"},
	StatusDeleted:    {},
}

func TestApplyEveryStatusActionPair(t *testing.T) {
	for _, s := range Statuses() {
		for _, a := range AllActions() {
			t.Run(s.String()+"/"+a.String(), func(t *testing.T) {
				from := State{Status: s, Version: 7}
				if s == StatusMigrating {
					from.Prior = StatusSuspended
				}
				got, err := from.Apply(a)
				to, legal := want[s][a]
				if legal != Allowed(s, a) {
					t.Fatalf("Allowed(%s, %s) = %v, want %v", s, a, !legal, legal)
				}
				if !legal {
					var ie *IllegalActionError
					if !errors.Is(err, ErrIllegalAction) || !errors.As(err, &ie) {
						t.Fatalf("Apply: err = %v, want IllegalActionError", err)
					}
					if ie.Status != s || ie.Action != a {
						t.Fatalf("error names %s/%s, want %s/%s", ie.Status, ie.Action, s, a)
					}
					if got != from {
						t.Fatalf("refused action changed the state: %+v", got)
					}
					return
				}
				if err != nil {
					t.Fatalf("Apply: %v", err)
				}
				switch to {
				case "=":
					if got != from {
						t.Fatalf("got %+v, want unchanged %+v", got, from)
					}
					if Changes(s, a) {
						t.Fatal("Changes = true for a non-changing action")
					}
				case "prior":
					if got.Status != StatusSuspended || got.Prior != 0 || got.Version != 8 {
						t.Fatalf("got %+v, want suspended v8", got)
					}
				default:
					if got.Status.String() != to || got.Version != 8 {
						t.Fatalf("got %+v, want %s v8", got, to)
					}
					if to == "migrating" && got.Prior != s {
						t.Fatalf("migrating prior = %s, want %s", got.Prior, s)
					}
				}
			})
		}
	}
}

func TestActionsOffered(t *testing.T) {
	tests := []struct {
		status Status
		want   []Action
	}{
		{StatusRegistered, []Action{ActionSearchProvider, ActionEdit, ActionDelete}},
		{StatusStarted, []Action{ActionStop, ActionView, ActionSuspend}},
		{StatusStopped, []Action{ActionStart, ActionMigrate, ActionDelete}},
		{StatusStored, []Action{ActionStart, ActionMigrate, ActionDelete}},
		{StatusSuspended, []Action{ActionResume, ActionMigrate, ActionDelete}},
		{StatusMigrating, []Action{ActionMigrationStatus}},
		{StatusDeleted, nil},
	}
	for _, tt := range tests {
		t.Run(tt.status.String(), func(t *testing.T) {
			if got := Actions(tt.status); fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("Actions = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMigratingWithoutPriorRefused(t *testing.T) {
	_, err := State{Status: StatusMigrating, Version: 3}.Apply(ActionMigrationDone)
	if !errors.Is(err, ErrIllegalAction) {
		t.Fatalf("err = %v, want ErrIllegalAction", err)
	}
}

func TestLifecycleVersions(t *testing.T) {
	st := State{Status: StatusRegistered}
	for i, a := range []Action{ActionSearchProvider, ActionStore, ActionStart, ActionView, ActionSuspend,
		ActionMigrate, ActionMigrationStatus, ActionMigrationDone, ActionResume, ActionStop} {
		var err error
		if st, err = st.Apply(a); err != nil {
			t.Fatalf("step %d %s: %v", i, a, err)
		}
	}
	if st.Status != StatusStopped || st.Version != 7 {
		t.Fatalf("end state %+v, want stopped v7", st)
	}
}

func TestParseAction(t *testing.T) {
	tests := []struct {
		in   string
		want Action
		err  error
	}{
		{"startmachine", ActionStart, nil},
		{" SuspendMachine ", ActionSuspend, nil},
		{"start", ActionStart, nil},
		{"console", ActionView, nil},
		{"editregistrationinfo", ActionEdit, nil},
		{"migrationdone", ActionMigrationDone, nil},
		{"reboot", 0, ErrUnknownAction},
		{"", 0, ErrUnknownAction},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseAction(tt.in)
			if !errors.Is(err, tt.err) || got != tt.want {
				t.Fatalf("ParseAction(%q) = %v, %v; want %v, %v", tt.in, got, err, tt.want, tt.err)
			}
			var ue *UnknownActionError
			if tt.err != nil && (!errors.As(err, &ue) || ue.Name != tt.in) {
				t.Fatalf("error %v does not name %q", err, tt.in)
			}
		})
	}
}

func TestStatusText(t *testing.T) {
	for _, s := range Statuses() {
		got, err := ParseStatus(s.String())
		if err != nil || got != s {
			t.Fatalf("ParseStatus(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := ParseStatus("running"); !errors.Is(err, ErrUnknownStatus) {
		t.Fatalf("ParseStatus(running) err = %v", err)
	}
	b, err := json.Marshal(State{Status: StatusMigrating, Version: 2, Prior: StatusStopped})
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"status":"migrating","version":2,"prior":"stopped"}` {
		t.Fatalf("json = %s", b)
	}
	var st State
	if err := json.Unmarshal([]byte(`{"status":"started","version":5}`), &st); err != nil || st != (State{Status: StatusStarted, Version: 5}) {
		t.Fatalf("unmarshal = %+v, %v", st, err)
	}
	if err := json.Unmarshal([]byte(`{"status":"exploded"}`), &st); !errors.Is(err, ErrUnknownStatus) {
		t.Fatalf("unmarshal bad status err = %v", err)
	}
}

func FuzzParseAction(f *testing.F) {
	for _, a := range AllActions() {
		f.Add(a.String())
	}
	f.Add("start")
	f.Add("\x00")
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAction(s)
		if err != nil {
			if !errors.Is(err, ErrUnknownAction) {
				t.Fatalf("error %v is not ErrUnknownAction", err)
			}
			return
		}
		b, err := a.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back Action
		if err := back.UnmarshalText(b); err != nil || back != a {
			t.Fatalf("round trip %q -> %v -> %q -> %v, %v", s, a, b, back, err)
		}
	})
}

func FuzzParseStatus(f *testing.F) {
	for _, s := range Statuses() {
		f.Add(s.String())
	}
	f.Fuzz(func(t *testing.T, s string) {
		st, err := ParseStatus(s)
		if err != nil {
			return
		}
		if back, err := ParseStatus(st.String()); err != nil || back != st {
			t.Fatalf("round trip %q -> %v -> %v, %v", s, st, back, err)
		}
	})
}
