#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Fetch Debian's stock kernel (the package linux-image-amd64 points at).

linux-image-amd64 is a metapackage; its first dependency names the real image
package (linux-image-6.1.0-<abi>-amd64 on bookworm).  This script resolves that
name with `apt-cache depends`, downloads the .deb with `apt-get download` into
a cache directory (under the build dir; never committed), unpacks it with
`dpkg -x` and prints the path of the vmlinuz it contains.

Usage:
  fetch-kernel.py --cache-dir DIR [--output PATH] [--package NAME]

--output copies the vmlinuz to PATH (for a meson custom_target); without it the
path inside the cache is printed on stdout.  Runs are idempotent: an unpacked
package in the cache is reused without network access.
"""

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys

METAPACKAGE = 'linux-image-amd64'


def log(msg):
    print('fetch-kernel: ' + msg, file=sys.stderr)


def run(cmd, **kw):
    try:
        return subprocess.run(cmd, check=True, text=True,
                              stdout=subprocess.PIPE, **kw).stdout
    except FileNotFoundError:
        sys.exit('fetch-kernel: %s not found (needs a Debian host with apt)'
                 % cmd[0])
    except subprocess.CalledProcessError as e:
        sys.exit('fetch-kernel: `%s` failed with status %d'
                 % (' '.join(cmd), e.returncode))


def resolve_image_package(meta=METAPACKAGE):
    """Return the real linux-image-<version>-amd64 package name of META."""
    out = run(['apt-cache', 'depends', meta])
    for line in out.splitlines():
        m = re.match(r'\s*\|?Depends:\s*(linux-image-\S+-amd64)\s*$', line)
        if m and not m.group(1).endswith('-unsigned'):
            return m.group(1)
    sys.exit('fetch-kernel: cannot find the image package %s depends on; '
             'apt-cache depends said:\n%s' % (meta, out))


def package_version(pkg):
    out = run(['apt-cache', 'show', '--no-all-versions', pkg])
    m = re.search(r'^Version:\s*(\S+)', out, re.M)
    if not m:
        sys.exit('fetch-kernel: apt-cache show %s gave no Version' % pkg)
    return m.group(1)


def find_vmlinuz(root):
    hits = sorted(glob.glob(os.path.join(root, 'boot', 'vmlinuz-*')))
    return hits[0] if hits else None


def fetch(cache_dir, pkg=None, keep_modules=False):
    """Download and unpack the kernel package; return the vmlinuz path."""
    os.makedirs(cache_dir, exist_ok=True)
    pkg = pkg or resolve_image_package()
    version = package_version(pkg)
    # The version contains ':' only with an epoch; keep the file name tame.
    tag = '%s_%s' % (pkg, version.replace(':', '%3a'))
    root = os.path.join(cache_dir, tag)
    vmlinuz = find_vmlinuz(root)
    if vmlinuz:
        log('using cached %s' % vmlinuz)
        return vmlinuz

    debs = glob.glob(os.path.join(cache_dir, '%s_*.deb' % pkg))
    debs = [d for d in debs if version.replace(':', '%3a') in d]
    if not debs:
        log('downloading %s %s (about 70 MB)' % (pkg, version))
        # apt-get download writes into the current directory.  As root it
        # drops privileges to _apt, which cannot write everywhere; that only
        # produces a warning and the download still lands here.
        subprocess.run(['apt-get', 'download', '-q', '%s=%s' % (pkg, version)],
                       cwd=cache_dir, check=True)
        debs = glob.glob(os.path.join(cache_dir, '%s_*.deb' % pkg))
    if not debs:
        sys.exit('fetch-kernel: apt-get download produced no .deb in %s'
                 % cache_dir)

    tmp = root + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    log('unpacking %s' % os.path.basename(debs[0]))
    run(['dpkg', '-x', debs[0], tmp])
    if not keep_modules:
        # ~400 MB of modules; the test initramfs loads none.
        shutil.rmtree(os.path.join(tmp, 'lib'), ignore_errors=True)
    os.replace(tmp, root)
    vmlinuz = find_vmlinuz(root)
    if not vmlinuz:
        sys.exit('fetch-kernel: %s contains no boot/vmlinuz-*' % debs[0])
    return vmlinuz


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--cache-dir', required=True,
                    help='download/unpack directory (under the build dir)')
    ap.add_argument('--output', help='copy vmlinuz to this path')
    ap.add_argument('--package', help='image package (default: resolved '
                    'from %s)' % METAPACKAGE)
    ap.add_argument('--keep-modules', action='store_true',
                    help='keep lib/modules of the unpacked package')
    args = ap.parse_args()
    vmlinuz = fetch(os.path.abspath(args.cache_dir), args.package,
                    args.keep_modules)
    if args.output:
        tmp = args.output + '.tmp'
        shutil.copyfile(vmlinuz, tmp)
        os.replace(tmp, args.output)
        print(os.path.abspath(args.output))
    else:
        print(vmlinuz)


if __name__ == '__main__':
    main()
