/**
 * Vulkan discovery for Dawn on Linux: where the Vulkan loader (libvulkan.so.1) is and which driver
 * manifests (ICD .json files) it would read, checked before Dawn starts so that a machine without
 * Vulkan gets one clear line saying what to install instead of Dawn's warnings.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** What to install when Dawn finds no adapter (Linux; other systems: their GPU driver). */
export const VULKAN_HINT =
  "install the Vulkan loader and the GPU's Vulkan driver (Debian/Ubuntu: apt-get install libvulkan1; NVIDIA's driver ships its Vulkan ICD, " +
  "AMD/Intel: mesa-vulkan-drivers); for a software adapter: Debian's chromium with LD_LIBRARY_PATH=/usr/lib/chromium " +
  'VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json';

/**
 * Where the Vulkan loader (libvulkan.so.1) is, or null: LD_LIBRARY_PATH, the ld.so.conf folders and the
 * usual library folders (Linux only; elsewhere Dawn does not use Vulkan and this returns '').
 * Checked first so that a machine without Vulkan gets one clear line instead of Dawn's warning.
 */
export function findVulkanLoader(env: NodeJS.ProcessEnv = process.env): string | null {
  if (process.platform !== 'linux') return '';
  const dirs = (env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean);
  try {
    const confs = [
      '/etc/ld.so.conf',
      ...readdirSync('/etc/ld.so.conf.d')
        .filter((f) => f.endsWith('.conf'))
        .map((f) => join('/etc/ld.so.conf.d', f)),
    ];
    for (const conf of confs) {
      for (const line of readFileSync(conf, 'utf8').split('\n')) if (line.startsWith('/')) dirs.push(line.trim());
    }
  } catch {
    // no ld.so.conf.d: the usual folders below
  }
  dirs.push(
    '/lib/x86_64-linux-gnu',
    '/usr/lib/x86_64-linux-gnu',
    '/lib/aarch64-linux-gnu',
    '/usr/lib/aarch64-linux-gnu',
    '/lib64',
    '/usr/lib64',
    '/lib',
    '/usr/lib',
    '/usr/local/lib',
  );
  for (const dir of dirs) {
    const path = join(dir, 'libvulkan.so.1');
    if (existsSync(path)) return path;
  }
  return null;
}

/**
 * The Vulkan driver manifests (ICD .json files) the Vulkan loader would read, as its Linux search goes:
 * VK_DRIVER_FILES / VK_ICD_FILENAMES (files or folders) replace the search, VK_ADD_DRIVER_FILES adds to
 * it; else the icd.d folders under the XDG config and data folders and /etc. Linux only (elsewhere '[]'
 * is not meaningful and the check is skipped by returning null). Checked before Dawn creates an
 * instance so that a machine without a driver gets one clear line instead of Dawn's warnings.
 */
export function findVulkanDrivers(env: NodeJS.ProcessEnv = process.env): string[] | null {
  if (process.platform !== 'linux') return null;
  const list = (v: string | undefined) => (v ?? '').split(':').filter(Boolean);
  const jsonIn = (path: string): string[] => {
    try {
      if (path.endsWith('.json')) return existsSync(path) ? [path] : [];
      return readdirSync(path)
        .filter((f) => f.endsWith('.json'))
        .map((f) => join(path, f));
    } catch {
      return [];
    }
  };
  const given = list(env.VK_DRIVER_FILES ?? env.VK_ICD_FILENAMES);
  const added = list(env.VK_ADD_DRIVER_FILES).flatMap(jsonIn);
  if (given.length) return [...given.flatMap(jsonIn), ...added];
  const home = env.HOME ?? '';
  const dirs = [
    env.XDG_CONFIG_HOME || join(home, '.config'),
    ...(list(env.XDG_CONFIG_DIRS).length ? list(env.XDG_CONFIG_DIRS) : ['/etc/xdg']),
    '/etc',
    env.XDG_DATA_HOME || join(home, '.local/share'),
    ...(list(env.XDG_DATA_DIRS).length ? list(env.XDG_DATA_DIRS) : ['/usr/local/share', '/usr/share']),
  ];
  return [...dirs.flatMap((d) => jsonIn(join(d, 'vulkan', 'icd.d'))), ...added];
}
