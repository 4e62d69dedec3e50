package cookie

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/peertest"
	"github.com/haagent/haagent/internal/settings"
)

const bkt = "circleci-ha"

// entry is the default layout's entry for the file.
func entry() config.Entry {
	return layout.New("/", nil).Entry(layout.InstallationCustomizations)
}

// File is the default layout's installation customizations, where the tests look.
var File = entry().Dest

func ensure(b *bucket.Bucket, root string) (Result, error) {
	res, _, err := Ensure(context.Background(), b, root, entry())
	return res, err
}

func fileValue(t *testing.T, root string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, File))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), Variable+"="); n != 1 {
		t.Fatalf("%d lines for %s, want exactly 1:\n%s", n, Variable, b)
	}
	fi, _ := os.Stat(filepath.Join(root, File))
	if fi.Mode().Perm() != 0o644 {
		t.Fatalf("mode %#o, want 0644 (as CircleCI's own userdata left it)", fi.Mode().Perm())
	}
	return LocalValue(b)
}

func codes(err error) []string {
	var f *findings.Failure
	if !errors.As(err, &f) {
		return nil
	}
	var out []string
	for _, x := range f.Findings {
		out = append(out, x.Code.String())
	}
	return out
}

func TestCookieKeyGeneratedOnceAndStableAcrossReplacement(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, bkt)
	b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)

	root := t.TempDir()
	res, err := ensure(b, root)
	if err != nil {
		t.Fatal(err)
	}
	v := fileValue(t, root)
	if res.Source != "generated" || !Valid(v) {
		t.Fatalf("source %q value valid=%v", res.Source, Valid(v))
	}
	if got := string(s.Object(bkt, Object)); got != v {
		t.Fatalf("the bucket holds a different key than the file")
	}

	// A replacement instance: a wiped root gets the same key back from S3.
	root2 := t.TempDir()
	res, err = ensure(b, root2)
	if err != nil {
		t.Fatal(err)
	}
	if res.Source != "s3" || fileValue(t, root2) != v {
		t.Fatalf("replacement got source %q and a different key", res.Source)
	}
	// A reboot: nothing changes.
	_, changed, err := Ensure(context.Background(), b, root2, entry())
	if err != nil || changed {
		t.Fatalf("a re-run rewrote the file (changed=%v, err=%v)", changed, err)
	}
}

func TestCookieKeyFileKeepsOtherLinesAndCollapsesDuplicates(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, bkt)
	s.Put(t, bkt, Object, []byte("AAAABBBBCCCCDDDD\n"))
	b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	// What the runbook's echo left after three boots, around a real setting.
	old := "export OTHER_SETTING=\"keep me\"\n" +
		"‘CIRCLE_SECRETS_SESSION_COOKIE_KEY=<random_16_char_string>’\n" +
		"CIRCLE_SECRETS_SESSION_COOKIE_KEY=oldoldoldoldold1\n" +
		"export CIRCLE_SECRETS_SESSION_COOKIE_KEY=\"oldoldoldoldold2\"\n"
	os.WriteFile(filepath.Join(root, File), []byte(old), 0o644)
	if _, err := ensure(b, root); err != nil {
		t.Fatal(err)
	}
	if v := fileValue(t, root); v != "AAAABBBBCCCCDDDD" {
		t.Fatalf("the bucket's key must win, got a different one")
	}
	got, _ := os.ReadFile(filepath.Join(root, File))
	if !strings.HasPrefix(string(got), "export OTHER_SETTING=\"keep me\"\n") || strings.Contains(string(got), "‘") {
		t.Fatalf("other lines must be kept and broken ones replaced:\n%s", got)
	}
}

func TestCookieKeyExistingLocalKeyIsUploaded(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, bkt)
	b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, File), []byte("export CIRCLE_SECRETS_SESSION_COOKIE_KEY=\"LocalKey12345678\"\n"), 0o600)
	res, changed, err := Ensure(context.Background(), b, root, entry())
	if err != nil {
		t.Fatal(err)
	}
	if res.Source != "local" || string(s.Object(bkt, Object)) != "LocalKey12345678" {
		t.Fatalf("an existing install's key must be kept and saved to the bucket (source %q)", res.Source)
	}
	// The file's content did not change, and its 0600 (an older haagent's) is still put
	// back to 0644.
	if changed {
		t.Fatal("the file was rewritten although its content is the same")
	}
	fileValue(t, root)
}

func TestCookieKeyConcurrentFirstBootsAgree(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, bkt)
	const n = 6
	values := make([]string, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)
			root := t.TempDir()
			if _, err := ensure(b, root); err != nil {
				t.Error(err)
				return
			}
			b2, _ := os.ReadFile(filepath.Join(root, File))
			values[i] = LocalValue(b2)
		}(i)
	}
	wg.Wait()
	want := string(s.Object(bkt, Object))
	for i, v := range values {
		if v != want {
			t.Errorf("instance %d ended with a different key than the bucket's", i)
		}
	}
}

func TestCookieKeyNotGeneratedWhenS3DidNotSayMissing(t *testing.T) {
	t.Run("403", func(t *testing.T) {
		s := peertest.StartS3(t)
		s.MakeBucket(t, bkt)
		s.CreateUser(t, "norights", "norights-secret")
		b := peertest.OpenBucket(t, s.URL, "norights", "norights-secret", bkt, 3, 5*time.Second)
		root := t.TempDir()
		_, err := ensure(b, root)
		if c := codes(err); len(c) != 1 || c[0] != findings.CookieKeyUnavailable.String() {
			t.Fatalf("want COOKIE_KEY_UNAVAILABLE, got %v", err)
		}
		if s.Object(bkt, Object) != nil {
			t.Fatal("a key was created although S3 answered 403")
		}
		if _, err := os.Stat(filepath.Join(root, File)); err == nil {
			t.Fatal("a key was written although S3 answered 403")
		}
		// With a key on the machine, it is kept, with a warning.
		os.MkdirAll(filepath.Join(root, "etc"), 0o755)
		os.WriteFile(filepath.Join(root, File), []byte("CIRCLE_SECRETS_SESSION_COOKIE_KEY=LocalKey12345678\n"), 0o600)
		res, err := ensure(b, root)
		if err != nil || res.Source != "local" || len(res.Findings) != 1 || res.Findings[0].Code != findings.CookieKeyLocalOnly {
			t.Fatalf("want the local key kept with COOKIE_KEY_LOCAL_ONLY, got %+v %v", res, err)
		}
	})
	t.Run("5xx", func(t *testing.T) {
		f := peertest.StartFakeS3(t, bkt, nil)
		f.SetFault(func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
			peertest.S3Error(w, 500, "InternalError", "We encountered an internal error.")
			return true
		})
		b := peertest.OpenBucket(t, f.URL, "a", "b", bkt, 3, 5*time.Second)
		_, err := ensure(b, t.TempDir())
		if c := codes(err); len(c) != 1 || c[0] != findings.CookieKeyUnavailable.String() {
			t.Fatalf("want COOKIE_KEY_UNAVAILABLE, got %v", err)
		}
		if f.Count("PUT", Object) != 0 {
			t.Fatal("a key was written although S3 answered 500")
		}
		if f.Count("GET", Object) != 3 {
			t.Fatalf("a 500 must be retried: %d GETs", f.Count("GET", Object))
		}
	})
}

func TestCookieKeyPutDeniedKeepsGeneratedKeyWithWarning(t *testing.T) {
	f := peertest.StartFakeS3(t, bkt, nil)
	f.DenyPuts()
	b := peertest.OpenBucket(t, f.URL, "a", "b", bkt, 3, 5*time.Second)
	root := t.TempDir()
	res, err := ensure(b, root)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Findings) != 1 || res.Findings[0].Code != findings.CookieKeyNotSaved || !strings.Contains(res.Findings[0].Fix, "s3:PutObject") {
		t.Fatalf("want COOKIE_KEY_NOT_SAVED naming s3:PutObject, got %+v", res.Findings)
	}
	if !Valid(fileValue(t, root)) {
		t.Fatal("no usable key on the machine")
	}
}

func TestCookieKeyInvalidInBucketIsRefused(t *testing.T) {
	f := peertest.StartFakeS3(t, bkt, map[string][]byte{Object: []byte("too-short")})
	b := peertest.OpenBucket(t, f.URL, "a", "b", bkt, 3, 5*time.Second)
	root := t.TempDir()
	_, err := ensure(b, root)
	if c := codes(err); len(c) != 1 || c[0] != findings.CookieKeyInvalid.String() {
		t.Fatalf("want COOKIE_KEY_INVALID, got %v", err)
	}
	if strings.Contains(err.Error(), "too-short") {
		t.Fatal("the key's content appears in the error")
	}
	if f.Count("PUT", Object) != 0 {
		t.Fatal("an invalid key in the bucket must never be overwritten")
	}
}

func TestRenderAndLocalValue(t *testing.T) {
	for _, v := range []string{"abcdefghijklmnop", `ab'cd"ef$gh\ij k`[:16], "0123456789ABCDEF", "a\"b$c\\d`e'f$(g)h!"[:16]} {
		if !Valid(v) {
			continue
		}
		out := Render([]byte("A=1\n"), v)
		if got := LocalValue(out); got != v {
			t.Errorf("round trip of %q gave %q (file %q)", v, got, out)
		}
		if got := shellValue(t, out); got != v {
			t.Errorf("a shell reads %q from the line written for %q (file %q)", got, v, out)
		}
	}
}

// haPage is circle-installation-customizations as CircleCI's HA page lays it out, with the
// session cookie key a deployment built by that page keeps in it (haPageKey, its $ escaped as
// the shell needs).
const haPage = `# Note that connection strings below should be modified as necessary

MONGO_BASE_URI=mongodb://circle:s3cret-mongo@mongo-1:27017
export CIRCLE_SECRETS_MONGODB_MAIN_URI="$MONGO_BASE_URI/circle_ghe?ssl=true&authSource=admin"
export CIRCLE_SECRETS_SESSION_COOKIE_KEY="HaPage\$Key012345"
export CIRCLE_SECRETS_MONGODB_BUILD_STATE_URI="$MONGO_BASE_URI/build_state_dev_ghe?ssl=true&authSource=admin"
`

const haPageKey = "HaPage$Key012345"

// shellValue is the key a shell sourcing content would see.
func shellValue(t *testing.T, content []byte) string {
	t.Helper()
	s, fs := settings.Parse(File, content)
	if len(fs) != 0 {
		t.Fatalf("the merged file does not parse as the services' shell would: %+v", fs)
	}
	v, _ := s.Get(Variable)
	return v.Value
}

func TestCookieKeyAdoptedFromHAPageCustomizations(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, bkt)
	b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)
	// The machine holds another key (an older boot): the bucket's copy is the deployment's.
	res, err := Merge(context.Background(), b, Input{
		InPlace: []byte("export CIRCLE_SECRETS_SESSION_COOKIE_KEY=\"LocalKey12345678\"\n"),
		Bucket:  []byte(haPage), FromBucket: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Source != "customizations" || len(res.Findings) != 0 {
		t.Fatalf("source %q findings %+v, want the customizations' key adopted", res.Source, res.Findings)
	}
	if got := string(s.Object(bkt, Object)); got != haPageKey {
		t.Fatalf("the object must be created with the customizations' exact key (it holds %d bytes)", len(got))
	}
	// Exactly one export line, in the place of the bucket's, every other line as it was.
	if n := strings.Count(string(res.Content), Variable+"="); n != 1 {
		t.Fatalf("%d lines for the key:\n%s", n, res.Content)
	}
	if string(res.Content) != haPage {
		t.Fatalf("merged file:\n%s\nwant the bucket's copy unchanged:\n%s", res.Content, haPage)
	}
	if shellValue(t, res.Content) != haPageKey || LocalValue(res.Content) != haPageKey {
		t.Fatal("the services' shell would read another key from the merged file")
	}
	// The next boot (another instance, the object now there) agrees and says nothing.
	res, err = Merge(context.Background(), b, Input{Bucket: []byte(haPage), FromBucket: true})
	if err != nil || res.Source != "s3" || len(res.Findings) != 0 || string(res.Content) != haPage {
		t.Fatalf("second boot: source %q findings %+v err %v", res.Source, res.Findings, err)
	}
}

func TestCookieKeyObjectWinsOverCustomizationsWithWarning(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, bkt)
	s.Put(t, bkt, Object, []byte("ObjectKey0123456\n"))
	b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)
	res, err := Merge(context.Background(), b, Input{Bucket: []byte(haPage), FromBucket: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Source != "s3" || shellValue(t, res.Content) != "ObjectKey0123456" {
		t.Fatalf("the object's key must win (source %q)", res.Source)
	}
	if n := strings.Count(string(res.Content), Variable+"="); n != 1 || !strings.Contains(string(res.Content), "export "+Variable+"=\"ObjectKey0123456\"\n") {
		t.Fatalf("want exactly one export line with the object's key:\n%s", res.Content)
	}
	if len(res.Findings) != 1 || res.Findings[0].Code != findings.CookieKeyOverridden || res.Findings[0].Target != "s3://"+bkt+"/"+CustomizationsObject {
		t.Fatalf("want COOKIE_KEY_OVERRIDDEN on the bucket's customizations, got %+v", res.Findings)
	}
	f := res.Findings[0]
	for _, secret := range []string{"ObjectKey0123456", haPageKey, "s3cret-mongo"} {
		if strings.Contains(f.Summary+f.Evidence+f.Fix+f.Target, secret) {
			t.Fatalf("the warning shows a secret: %+v", f)
		}
	}
	if got := string(s.Object(bkt, Object)); got != "ObjectKey0123456\n" {
		t.Fatal("the object must never be replaced")
	}
}

func TestCookieKeyCustomizationsWithoutLine(t *testing.T) {
	const noLine = "MONGO_BASE_URI=mongodb://circle:pw@mongo-1:27017\nexport CIRCLE_SECRETS_MONGODB_MAIN_URI=\"$MONGO_BASE_URI/circle_ghe\""
	t.Run("machine key kept and saved", func(t *testing.T) {
		s := peertest.StartS3(t)
		s.MakeBucket(t, bkt)
		b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)
		res, err := Merge(context.Background(), b, Input{
			InPlace: []byte("CIRCLE_SECRETS_SESSION_COOKIE_KEY=LocalKey12345678\n"), Bucket: []byte(noLine), FromBucket: true,
		})
		if err != nil || res.Source != "local" || string(s.Object(bkt, Object)) != "LocalKey12345678" {
			t.Fatalf("source %q err %v: the machine's key must be kept and saved", res.Source, err)
		}
		if want := noLine + "\nexport " + Variable + "=\"LocalKey12345678\"\n"; string(res.Content) != want {
			t.Fatalf("merged file:\n%s\nwant:\n%s", res.Content, want)
		}
	})
	t.Run("minted", func(t *testing.T) {
		s := peertest.StartS3(t)
		s.MakeBucket(t, bkt)
		b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)
		res, err := Merge(context.Background(), b, Input{Bucket: []byte(noLine), FromBucket: true})
		if err != nil || res.Source != "generated" {
			t.Fatalf("source %q err %v", res.Source, err)
		}
		if v := shellValue(t, res.Content); !Valid(v) || v != string(s.Object(bkt, Object)) {
			t.Fatal("a new key must be minted, saved and written")
		}
	})
	t.Run("invalid line is never replaced", func(t *testing.T) {
		s := peertest.StartS3(t)
		s.MakeBucket(t, bkt)
		b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)
		_, err := Merge(context.Background(), b, Input{Bucket: []byte(noLine + "\nexport " + Variable + "=\"short\"\n"), FromBucket: true})
		if c := codes(err); len(c) != 1 || c[0] != findings.CookieKeyInvalid.String() || strings.Contains(err.Error(), "short") {
			t.Fatalf("want COOKIE_KEY_INVALID without the value, got %v", err)
		}
		if s.Object(bkt, Object) != nil {
			t.Fatal("a key was created over the customizations' own")
		}
	})
}

// An unchanged file behind a symlink is neither followed for its mode nor a failure.
func TestCookieKeyFileSymlinkIsNotFollowed(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, bkt)
	s.Put(t, bkt, Object, []byte("LocalKey12345678"))
	b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	target := filepath.Join(t.TempDir(), "private")
	os.WriteFile(target, []byte("export "+Variable+"=\"LocalKey12345678\"\n"), 0o600)
	os.Symlink(target, filepath.Join(root, File))
	res, err := ensure(b, root)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(target); fi.Mode().Perm() != 0o600 {
		t.Fatalf("the link was followed: its target is %#o", fi.Mode().Perm())
	}
	if len(res.Findings) != 1 || res.Findings[0].Code != findings.FileSymlinkNotFollowed || !strings.Contains(res.Findings[0].Summary, target) {
		t.Fatalf("want FILE_SYMLINK_NOT_FOLLOWED naming the target, got %+v", res.Findings)
	}
}

// The variable is found as bash runs the file, not by a pattern: after other assignments on an
// export line, with declare -x, with any spacing and a comment. The key there is adopted, and
// the file ends with exactly one assignment of it (the other variables kept).
func TestRenderFindsTheVariableAsTheShellDoes(t *testing.T) {
	const key, repl = "abcdefghijklmnop", "ZZZZZZZZZZZZZZZZ"
	line := "export " + Variable + "=\"" + repl + "\"\n"
	for _, tc := range []struct{ in, want string }{
		{"export A=1 " + Variable + "=\"" + key + "\"\n", "export A=1\n" + line},
		{"declare -x " + Variable + "=\"" + key + "\"\n", line},
		{"  export   " + Variable + "=" + key + " # comment\n", line},
		{"A=1; export " + Variable + "=" + key + "\nB=2\n", "A=1; \n" + line + "B=2\n"},
		{Variable + "=oldoldoldoldold1\nexport A=1 " + Variable + "=" + key + " B=2\n", line + "export A=1 B=2\n"},
	} {
		if got := LocalValue([]byte(tc.in)); got != key {
			t.Errorf("%q: the key there is not found (got %q)", tc.in, got)
		}
		out := Render([]byte(tc.in), repl)
		if string(out) != tc.want {
			t.Errorf("%q: rendered\n%q, want\n%q", tc.in, out, tc.want)
		}
		if got := shellValue(t, out); got != repl || strings.Count(string(out), Variable) != 1 {
			t.Errorf("%q: the shell reads %q from\n%s", tc.in, got, out)
		}
	}
	if s, _ := settings.Parse(File, Render([]byte("export A=1 "+Variable+"="+key+"\n"), repl)); func() string { v, _ := s.Get("A"); return v.Value }() != "1" {
		t.Error("the other variable of the line was lost")
	}
}

// Ensure merges and writes the file the layout entry names, not CircleCI's default path (the
// entry is moved under a test's root only: config validation keeps it in place on a machine).
func TestEnsureWritesTheLayoutsFile(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, bkt)
	s.Put(t, bkt, Object, []byte("BucketKey0123456"))
	b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)
	root := t.TempDir()
	e := entry()
	e.Dest = "/srv/cc/installation-customizations"
	moved := filepath.Join(root, e.Dest)
	os.MkdirAll(filepath.Dir(moved), 0o755)
	os.WriteFile(moved, []byte("MONGO_BASE_URI=mongodb://h\n"), 0o644)
	res, changed, err := Ensure(context.Background(), b, root, e)
	if err != nil || !changed || res.Source != "s3" {
		t.Fatalf("changed=%v source=%q err=%v", changed, res.Source, err)
	}
	got, _ := os.ReadFile(moved)
	if string(got) != "MONGO_BASE_URI=mongodb://h\nexport "+Variable+"=\"BucketKey0123456\"\n" {
		t.Fatalf("the layout's file holds:\n%s", got)
	}
	if _, err := os.Stat(filepath.Join(root, File)); err == nil {
		t.Fatalf("%s was written although the layout puts the file elsewhere", File)
	}
}
