// Package backup copies CircleCI's encryption keys to the bucket. On a new install CircleCI
// creates its keys on the machine; until they are in S3, a replacement instance loses them
// ("Losing the encryption keys may lead to the unrecoverable data inconsistency"). Nothing is
// ever overwritten or deleted, on either side.
package backup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/findings"
)

// Result says what happened to each local key.
type Result struct {
	Uploaded, InSync, Conflicts, NotBackedUp []string
	Findings                                 []findings.Finding
}

// Keys compares the local keys directory with the bucket prefix and uploads what is missing,
// reading each upload back.
func Keys(ctx context.Context, b *bucket.Bucket, root, localDir, prefix string, enc bucket.Encryption) (Result, error) {
	var res Result
	remote := map[string]bucket.Object{}
	objs, err := b.List(ctx, prefix)
	if err != nil {
		return res, fmt.Errorf("listing %s: %w", b.URI(prefix), err)
	}
	for _, o := range objs {
		remote[o.Rel] = o
	}
	dir := filepath.Join(root, localDir)
	var local []string
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.Type().IsRegular() && !strings.Contains(d.Name(), ".haagent-") {
			rel, _ := filepath.Rel(dir, p)
			local = append(local, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("reading %s: %w", localDir, err)
	}
	sort.Strings(local)
	for _, rel := range local {
		data, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			return res, fmt.Errorf("reading key %s: %w", rel, err)
		}
		key := prefix + rel
		if _, there := remote[rel]; !there {
			perr := b.PutIfAbsent(ctx, key, data, enc)
			if perr != nil && !errors.Is(perr, bucket.ErrExists) {
				res.NotBackedUp = append(res.NotBackedUp, rel)
				f := findings.New("KEYS_NOT_BACKED_UP", b.URI(key), fmt.Sprintf("encryption key %s exists only on this machine: uploading it failed", rel), perr.Error())
				var be *bucket.Error
				if errors.As(perr, &be) && be.Code() == "S3_ACCESS_DENIED" {
					f = f.WithFix(fmt.Sprintf("grant the instance role s3:PutObject on arn:aws:s3:::%s/%s%s* (and kms:GenerateDataKey with SSE-KMS); until then a replacement instance cannot decrypt CircleCI's data", b.Name, b.Prefix, prefix))
				}
				res.Findings = append(res.Findings, f)
				continue
			}
			if perr == nil {
				// Read back: the key is backed up only when S3 returns the same bytes.
				if same, err := sameContent(ctx, b, key, data); err != nil || !same {
					res.NotBackedUp = append(res.NotBackedUp, rel)
					res.Findings = append(res.Findings, findings.New("KEYS_NOT_BACKED_UP", b.URI(key),
						fmt.Sprintf("encryption key %s was uploaded but does not read back the same", rel), fmt.Sprint(err)))
					continue
				}
				res.Uploaded = append(res.Uploaded, rel)
				continue
			}
			// Another writer created it meanwhile: compare like any existing object.
		}
		same, err := sameContent(ctx, b, key, data)
		switch {
		case err != nil:
			res.NotBackedUp = append(res.NotBackedUp, rel)
			res.Findings = append(res.Findings, findings.New("KEYS_NOT_BACKED_UP", b.URI(key), fmt.Sprintf("cannot compare encryption key %s with the bucket's copy", rel), err.Error()))
		case same:
			res.InSync = append(res.InSync, rel)
		default:
			res.Conflicts = append(res.Conflicts, rel)
			res.Findings = append(res.Findings, findings.New("KEYS_CONFLICT", b.URI(key),
				fmt.Sprintf("encryption key %s differs between this machine and the bucket; neither is overwritten", rel), "sha256 differs (contents not shown)").
				WithFix(fmt.Sprintf("decide which key CircleCI's data was encrypted with; keep the other under another name; then make %s and %s agree", filepath.Join(localDir, rel), b.URI(key))))
		}
	}
	return res, nil
}

func sameContent(ctx context.Context, b *bucket.Bucket, key string, data []byte) (bool, error) {
	var got [32]byte
	err := b.Get(ctx, key, "", func(body io.Reader, _ bucket.Meta) error {
		h := sha256.New()
		if _, err := io.Copy(h, body); err != nil {
			return err
		}
		copy(got[:], h.Sum(nil))
		return nil
	})
	if err != nil {
		return false, err
	}
	want := sha256.Sum256(data)
	return bytes.Equal(got[:], want[:]), nil
}
