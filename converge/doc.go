// Package converge makes bpffs and the kernel hold what an object's
// configuration says, and undoes it when it cannot. It plans an object from
// its ELF file and configuration (Plan: every error of the user's input is
// found there, before anything is made), and installs the plan as a
// transaction (Tx):
//
//   - Prepare makes everything beside what runs: it refuses pins bpfsup did
//     not make (see ownership.go), adopts or creates the maps, adopts or
//     loads the programs (the verifier runs here), writes the manifest ahead
//     of the pins it is about to make, and pins the new maps and programs;
//   - Swap makes what runs the new state: migrated maps catch up, prog
//     array slots move, every link runs its program (updated in place where
//     the hook allows, make-before-break elsewhere: both may run for a
//     moment, never neither), replaced program pins move into place;
//   - Commit removes what the configuration no longer has (bpfsup's own
//     pins only) and writes the manifest; Rollback undoes Prepare and Swap.
//
// Apply runs several transactions together, all or nothing, as a plain
// loop: prepare all, swap each, commit all, roll back in reverse on
// failure. Install is a start: objects nothing changed for are adopted as
// their manifest records them, without reading their programs.
//
// Crash safety: every pin is made under a staging name and moved into
// place with renameat2, and the manifest names what is about to be pinned
// before it is (write-ahead), so a crash (SIGKILL) at any point leaves the
// old state or the new one, plus debris the next start recognises as
// bpfsup's and removes; the crash points of internal/crash mark each step.
// Down tears objects down, touching only what their manifests record.
// CheckObjects (check.go) says what a start or reload would decide without
// making anything: the plan, each program through the verifier on maps of
// its own, and the decisions an install takes of the pins there.
//
// An object file's bytes are verified (its digest, its signature:
// internal/objsign) when they are read, before anything parses them, and
// those bytes are what is parsed and loaded.
//
// There are no goroutines and no process state here: the supervisor owns
// those. File descriptors: an Installed holds its object's lock and every
// map, program and attachment of the object until Close; a Tx holds what a
// rollback needs until Commit or Rollback. What survives a restart of the
// process: the pins and the manifests.
package converge
