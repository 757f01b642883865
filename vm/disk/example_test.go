package disk_test

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/virtuoso-market/virtuoso/vm/disk"
)

// The report's disk "test": 3000 MB become 382 cylinders in two chunks.
func ExampleCreatePlain() {
	dir, err := os.MkdirTemp("", "plain")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)

	path := filepath.Join(dir, "test.pln")
	if _, err := disk.CreatePlain(path, 3000); err != nil {
		fmt.Println(err)
		return
	}
	text, _ := os.ReadFile(path)
	fmt.Print(string(text))

	d, err := disk.OpenPlain(path, true)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer d.Close()
	fmt.Println(d.Size(), "bytes")
	// Output:
	// DRIVETYPE scsi
	// #vm| VERSION 2
	// #vm| TOOLSVERSION 0
	// CYLINDERS 382
	// HEADS 255
	// SECTORS 63
	// #vm| CAPACITY 6136830
	// ACCESS "test1.dat" 0 4176900
	// ACCESS "test2.dat" 4176900 1959930
	// 3142056960 bytes
}
