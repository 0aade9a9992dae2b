package cgroup

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestWrapAddsBeforeExecAndRemoveKillsEverything(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups")
	}
	root, err := Root("podnet-lab-test-" + t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = root.Remove(time.Second) })
	g, err := root.Child("machine/component")
	if err != nil {
		t.Fatal(err)
	}
	// A process that forks a child which ignores SIGTERM: Remove must
	// still leave nothing.
	argv := g.Wrap("/bin/sh", "-c", "trap '' TERM; sleep 300 & sleep 300")
	cmd := exec.Command(argv[0], argv[1:]...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids, _ := root.Procs()
		if len(pids) >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes never showed up in the group: %v", pids)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !root.Populated() {
		t.Fatal("root not populated")
	}
	if err := root.Remove(200 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if root.Exists() {
		t.Fatal("group still exists")
	}
	select {
	case <-exited:
	case <-time.After(2 * time.Second):
		t.Fatal("the wrapped process is still running after Remove")
	}
}
