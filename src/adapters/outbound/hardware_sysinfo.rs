//! The real hardware probe: CPU model, GPUs, total memory and the system
//! disk's serial, read from `/proc`, `/sys` and sysinfo (PROTOCOL §4). It must
//! never fail for a missing source (that part reads "none" or "unknown") and
//! never answer differently on the same device, so it only reads sources
//! that do not change while the device runs.
//!
//! GPUs are named by their PCI vendor and device ids (`NVIDIA [10de:2204]`),
//! not by `pci.ids` names, which change when that database is updated. Every
//! PCI display controller counts, bound to a driver or not, so that loading
//! a driver later does not change the fingerprint. Non-PCI GPUs count when
//! their DRM card names them (`label`, `product_name`), and a Jetson's
//! integrated GPU by the chip its device-tree node names (`NVIDIA [ga10b]`).
//!
//! This file does the reading (files, links, sysinfo, `lspci`); what the
//! texts mean is parsed by `crate::domain::hardware::parse`.

use std::fs;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::domain::hardware::HardwareParts;
use crate::domain::hardware::parse::{
    cpuinfo_model, gpus_in_lspci, is_display_controller, is_drm_card, meminfo_total_kib, parse_hex,
    pci_name, root_mount_in_mountinfo, root_source_in_mounts, serial_in_disk_id,
    serial_in_vpd_page, strip_partition, tegra_gpu_name, tegra_soc, trimmed_text,
};
use crate::ports::{HardwareError, HardwareProbe};

/// How deep `/sys/block/*/slaves` is followed (device mapper over RAID over a partition …).
const MAX_STACKED_DEVICES: usize = 4;

/// Reads the hardware parts from files under a root directory.
#[derive(Debug, Clone)]
pub struct SysinfoProbe {
    root: PathBuf,
    /// The root is `/`: sysinfo and `lspci`, which read the real machine, may
    /// fill in what the files do not give.
    this_machine: bool,
}

impl Default for SysinfoProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl SysinfoProbe {
    /// Probes the machine this runs on.
    pub fn new() -> Self {
        Self::with_root("/")
    }

    /// Probes the `/proc`, `/sys` and `/dev` found under `root`. Only with
    /// root `/` are sysinfo and `lspci` asked as well (they would describe
    /// the real machine, not a tree built by a test).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let this_machine = root == Path::new("/");
        Self { root, this_machine }
    }

    /// Reads every part now (blocking file reads).
    pub fn read_parts(&self) -> HardwareParts {
        HardwareParts {
            cpu_model: self.cpu_model(),
            gpu_names: self.gpu_names(),
            memory_kib: self.memory_kib(),
            drive_serial: self.drive_serial(),
        }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    fn cpu_model(&self) -> String {
        let from_sysinfo = if self.this_machine {
            sysinfo_cpu_brand()
        } else {
            None
        };
        from_sysinfo
            .or_else(|| read_text(&self.path("proc/cpuinfo")).and_then(|text| cpuinfo_model(&text)))
            .unwrap_or_else(|| "unknown".to_owned())
    }

    fn memory_kib(&self) -> u64 {
        read_text(&self.path("proc/meminfo"))
            .and_then(|text| meminfo_total_kib(&text))
            .or_else(|| self.this_machine.then(sysinfo_memory_kib).flatten())
            .unwrap_or(0)
    }

    fn gpu_names(&self) -> Vec<String> {
        let mut names = self.drm_gpus();
        names.extend(self.pci_gpus());
        names.extend(self.jetson_gpu());
        if names.is_empty() && self.this_machine {
            names.extend(lspci_gpus());
        }
        names.sort();
        names.dedup();
        names
    }

    /// `/sys/class/drm/card<N>/device`: PCI ids, else a name the driver gives.
    fn drm_gpus(&self) -> Vec<String> {
        sorted_dir_names(&self.path("sys/class/drm"))
            .into_iter()
            .filter(|card| is_drm_card(card))
            .filter_map(|card| {
                let device = self.path("sys/class/drm").join(card).join("device");
                pci_device_name(&device)
                    .or_else(|| read_text(&device.join("label")))
                    .or_else(|| read_text(&device.join("product_name")))
            })
            .collect()
    }

    /// Every PCI display controller (class 0x03), with or without a driver.
    fn pci_gpus(&self) -> Vec<String> {
        let devices = self.path("sys/bus/pci/devices");
        sorted_dir_names(&devices)
            .into_iter()
            .filter_map(|slot| {
                let device = devices.join(slot);
                let class = read_text(&device.join("class")).and_then(|c| parse_hex(&c))?;
                is_display_controller(class)
                    .then(|| pci_device_name(&device))
                    .flatten()
            })
            .collect()
    }

    /// A Jetson's GPU is part of its Tegra SoC, not on PCI. It is found by
    /// its device-tree node (`ga10b@17000000` on JetPack 5, `bus@0/gpu@17000000`
    /// on JetPack 6), else by the platform device bound to that node in
    /// `/sys`, and named by its chip (`NVIDIA [ga10b]`): the same on every
    /// JetPack release, unlike the board's `model`. A Tegra whose GPU node
    /// cannot be read is named by its SoC (`NVIDIA [tegra234]`).
    fn jetson_gpu(&self) -> Option<String> {
        self.tegra_gpu_in_device_tree()
            .or_else(|| self.tegra_gpu_in_platform_devices())
            .or_else(|| {
                let soc = read_compatible(&self.device_tree()).and_then(|c| tegra_soc(&c))?;
                Some(format!("NVIDIA [{soc}]"))
            })
    }

    fn tegra_gpu_in_device_tree(&self) -> Option<String> {
        self.device_tree_nodes(&self.device_tree())
            .into_iter()
            .find_map(|node| read_compatible(&node).and_then(|c| tegra_gpu_name(&c)))
    }

    fn tegra_gpu_in_platform_devices(&self) -> Option<String> {
        let devices = self.path("sys/bus/platform/devices");
        sorted_dir_names(&devices).into_iter().find_map(|device| {
            read_compatible(&devices.join(device).join("of_node")).and_then(|c| tegra_gpu_name(&c))
        })
    }

    /// The device tree as the kernel shows it: `/proc/device-tree`, a link
    /// to `/sys/firmware/devicetree/base`.
    fn device_tree(&self) -> PathBuf {
        let proc = self.path("proc/device-tree");
        if proc.is_dir() {
            proc
        } else {
            self.path("sys/firmware/devicetree/base")
        }
    }

    /// The nodes where a SoC's devices sit: the root's children, and the
    /// children of its buses (`bus@0`, `soc`).
    fn device_tree_nodes(&self, tree: &Path) -> Vec<PathBuf> {
        let mut nodes = Vec::new();
        for name in sorted_dir_names(tree) {
            let node = tree.join(&name);
            if !node.is_dir() {
                continue;
            }
            if name.starts_with("bus@") || name == "soc" || name.starts_with("soc@") {
                nodes.extend(
                    sorted_dir_names(&node)
                        .into_iter()
                        .map(|child| node.join(child))
                        .filter(|child| child.is_dir()),
                );
            }
            nodes.push(node);
        }
        nodes
    }

    fn drive_serial(&self) -> Option<String> {
        let disk = self.system_disk()?;
        self.disk_serial(&disk)
    }

    /// The whole disk (not the partition) that holds `/`.
    fn system_disk(&self) -> Option<String> {
        if let Some(mount) =
            read_text(&self.path("proc/self/mountinfo")).and_then(|t| root_mount_in_mountinfo(&t))
        {
            let by_number = self.block_of_device_number(&mount.device_number);
            if let Some(disk) = by_number.or_else(|| self.block_of_source(&mount.source)) {
                return Some(self.disk_of_block(&disk, 0));
            }
        }
        let source =
            read_text(&self.path("proc/mounts")).and_then(|t| root_source_in_mounts(&t))?;
        self.block_of_source(&source)
            .map(|block| self.disk_of_block(&block, 0))
    }

    /// `/sys/dev/block/<major>:<minor>` names the block device of a mount.
    fn block_of_device_number(&self, device_number: &str) -> Option<String> {
        let link = self.path("sys/dev/block").join(device_number);
        let real = fs::canonicalize(link).ok()?;
        file_name(&real)
    }

    /// A mount source such as `/dev/nvme0n1p2` or `/dev/mapper/root`.
    fn block_of_source(&self, source: &str) -> Option<String> {
        let relative = source.strip_prefix("/dev/")?;
        if relative.is_empty() || relative == "root" || relative.contains("..") {
            return None;
        }
        let node = self.path("dev").join(relative);
        // `/dev/mapper/x` and `/dev/disk/by-*/x` are links to the node itself.
        let name = match fs::read_link(&node) {
            Ok(target) => file_name(&target)?,
            Err(_) => file_name(Path::new(relative))?,
        };
        if self.path("sys/class/block").join(&name).exists()
            || self.path("sys/block").join(&name).exists()
        {
            Some(name)
        } else {
            Some(strip_partition(&name).to_owned())
        }
    }

    /// Goes from a partition to its disk, and from a mapped device (LVM,
    /// LUKS, RAID) to the first disk under it.
    fn disk_of_block(&self, block: &str, depth: usize) -> String {
        if depth > MAX_STACKED_DEVICES {
            return block.to_owned();
        }
        let class = self.path("sys/class/block").join(block);
        if let Ok(real) = fs::canonicalize(&class)
            && real.join("partition").exists()
            && let Some(parent) = real.parent().and_then(file_name)
        {
            return self.disk_of_block(&parent, depth + 1);
        }
        if let Some(slave) = sorted_dir_names(&self.path("sys/block").join(block).join("slaves"))
            .into_iter()
            .next()
        {
            return self.disk_of_block(&slave, depth + 1);
        }
        if !self.path("sys/block").join(block).exists() {
            return strip_partition(block).to_owned();
        }
        block.to_owned()
    }

    fn disk_serial(&self, disk: &str) -> Option<String> {
        let block = self.path("sys/block").join(disk);
        read_text(&block.join("device/serial"))
            .or_else(|| read_text(&block.join("serial")))
            .or_else(|| {
                fs::read(block.join("device/vpd_pg80"))
                    .ok()
                    .and_then(|page| serial_in_vpd_page(&page))
            })
            .or_else(|| self.serial_in_disk_ids(disk))
    }

    /// `/dev/disk/by-id/<bus>-<model>_<serial>` links, as udev names them.
    fn serial_in_disk_ids(&self, disk: &str) -> Option<String> {
        let dir = self.path("dev/disk/by-id");
        let ids: Vec<String> = sorted_dir_names(&dir)
            .into_iter()
            .filter(|id| !id.contains("-part"))
            .filter(|id| {
                fs::read_link(dir.join(id))
                    .ok()
                    .and_then(|target| file_name(&target))
                    .is_some_and(|target| target == disk)
            })
            .collect();
        ["nvme-", "ata-", "mmc-", "scsi-", "usb-"]
            .iter()
            .flat_map(|bus| ids.iter().filter_map(move |id| id.strip_prefix(bus)))
            .find_map(serial_in_disk_id)
    }
}

#[async_trait]
impl HardwareProbe for SysinfoProbe {
    async fn probe(&self) -> Result<HardwareParts, HardwareError> {
        let probe = self.clone();
        tokio::task::spawn_blocking(move || probe.read_parts())
            .await
            .map_err(|e| HardwareError(format!("the hardware probe failed: {e}")))
    }
}

fn sysinfo_cpu_brand() -> Option<String> {
    use sysinfo::{CpuRefreshKind, RefreshKind, System};
    let system =
        System::new_with_specifics(RefreshKind::nothing().with_cpu(CpuRefreshKind::nothing()))
            .ok()?;
    let brand = system.cpus().first()?.brand().trim().to_owned();
    (!brand.is_empty()).then_some(brand)
}

fn sysinfo_memory_kib() -> Option<u64> {
    use sysinfo::{MemoryRefreshKind, RefreshKind, System};
    let system = System::new_with_specifics(
        RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
    )
    .ok()?;
    let kib = system.total_memory() / 1024;
    (kib > 0).then_some(kib)
}

/// `lspci -n`: `00:02.0 0300: 8086:3e92 (rev 02)`; ids, like the sysfs path.
fn lspci_gpus() -> Vec<String> {
    let output = match std::process::Command::new("lspci").arg("-n").output() {
        Ok(output) if output.status.success() => output,
        _ => return Vec::new(),
    };
    gpus_in_lspci(&String::from_utf8_lossy(&output.stdout))
}

/// A file's text without surrounding whitespace or NULs; `None` when absent,
/// unreadable or empty.
fn read_text(path: &Path) -> Option<String> {
    trimmed_text(&fs::read(path).ok()?)
}

/// A device-tree node's `compatible` list (NUL-separated, kept as bytes).
fn read_compatible(node: &Path) -> Option<Vec<u8>> {
    fs::read(node.join("compatible")).ok()
}

/// Names in a directory, sorted; empty when it cannot be read.
fn sorted_dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|listing| {
            listing
                .filter_map(|entry| entry.ok())
                .filter_map(|entry| entry.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn file_name(path: &Path) -> Option<String> {
    path.file_name()?.to_str().map(str::to_owned)
}

fn pci_device_name(device: &Path) -> Option<String> {
    let vendor = read_text(&device.join("vendor")).and_then(|v| parse_hex(&v))?;
    let id = read_text(&device.join("device")).and_then(|d| parse_hex(&d))?;
    Some(pci_name(
        u16::try_from(vendor).ok()?,
        u16::try_from(id).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake `/` in a tempdir.
    struct Tree(tempfile::TempDir);

    impl Tree {
        fn new() -> Self {
            Self(tempfile::tempdir().unwrap())
        }

        fn file(&self, path: &str, contents: impl AsRef<[u8]>) -> &Self {
            let path = self.0.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, contents).unwrap();
            self
        }

        fn dir(&self, path: &str) -> &Self {
            fs::create_dir_all(self.0.path().join(path)).unwrap();
            self
        }

        fn link(&self, path: &str, target: &str) -> &Self {
            let path = self.0.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            symlink(target, path).unwrap();
            self
        }

        fn probe(&self) -> SysinfoProbe {
            SysinfoProbe::with_root(self.0.path())
        }
    }

    fn mountinfo(device_number: &str, source: &str) -> String {
        format!(
            "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
             27 1 {device_number} / / rw,relatime shared:1 - ext4 {source} rw\n\
             28 27 0:24 / /dev/pts rw,relatime - devpts devpts rw\n"
        )
    }

    /// A desktop: PCI GPU behind a DRM card, NVMe system disk found by device number.
    fn desktop() -> Tree {
        let tree = Tree::new();
        let gpu = "sys/devices/pci0000:00/0000:01:00.0";
        let nvme = "sys/devices/pci0000:00/0000:02:00.0/nvme/nvme0";
        tree.file(
            "proc/meminfo",
            "MemTotal:       16384000 kB\nMemFree:  1000 kB\n",
        )
        .file(
            "proc/cpuinfo",
            "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n\n\
                 processor\t: 1\nmodel name\t: AMD EPYC\n",
        )
        .file(&format!("{gpu}/class"), "0x030000\n")
        .file(&format!("{gpu}/vendor"), "0x10de\n")
        .file(&format!("{gpu}/device"), "0x2204\n")
        .file("sys/devices/pci0000:00/0000:00:1f.0/class", "0x060100\n")
        .file("sys/devices/pci0000:00/0000:00:1f.0/vendor", "0x8086\n")
        .file("sys/devices/pci0000:00/0000:00:1f.0/device", "0x7a06\n")
        .link(
            "sys/bus/pci/devices/0000:01:00.0",
            "../../../devices/pci0000:00/0000:01:00.0",
        )
        .link(
            "sys/bus/pci/devices/0000:00:1f.0",
            "../../../devices/pci0000:00/0000:00:1f.0",
        )
        .dir(&format!("{gpu}/drm/card0"))
        .link("sys/class/drm/card0", &format!("../../../{gpu}/drm/card0"))
        .link(&format!("{gpu}/drm/card0/device"), "../../../0000:01:00.0")
        .dir("sys/class/drm/card0-HDMI-A-1")
        .dir("sys/class/drm/renderD128")
        .file(&format!("{nvme}/serial"), "S3EVNX0K123456      \n")
        .file(&format!("{nvme}/nvme0n1/nvme0n1p2/partition"), "2\n")
        .link(&format!("{nvme}/nvme0n1/device"), "../../nvme0")
        .link("sys/block/nvme0n1", &format!("../../{nvme}/nvme0n1"))
        .link(
            "sys/class/block/nvme0n1",
            &format!("../../../{nvme}/nvme0n1"),
        )
        .link(
            "sys/class/block/nvme0n1p2",
            &format!("../../../{nvme}/nvme0n1/nvme0n1p2"),
        )
        .link(
            "sys/dev/block/259:2",
            &format!("../../../{nvme}/nvme0n1/nvme0n1p2"),
        )
        .file("proc/self/mountinfo", mountinfo("259:2", "/dev/nvme0n1p2"));
        tree
    }

    #[tokio::test]
    async fn a_desktop_tree_gives_the_expected_line() {
        let parts = desktop().probe().probe().await.unwrap();
        assert_eq!(
            parts.fingerprint_line(),
            "CPU: AMD EPYC. GPU: NVIDIA [10de:2204]. Memory: 16384000. DriveSerial: S3EVNX0K123456"
        );
    }

    /// A Jetson tree of `fixtures/jetson` (its README says where they come from).
    fn jetson(board: &str) -> SysinfoProbe {
        SysinfoProbe::with_root(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures/jetson")
                .join(board),
        )
    }

    #[test]
    fn jetson_trees_give_the_integrated_gpu_by_its_chip() {
        let orin = jetson("agx-orin-jetpack5").read_parts();
        assert_eq!(
            orin.fingerprint_line(),
            "CPU: ARMv8 Processor rev 1 (v8l). GPU: NVIDIA [ga10b]. Memory: 30536288. \
             DriveSerial: 0x2f6e9a41"
        );
        let xavier = jetson("xavier-nx-jetpack5").read_parts();
        assert_eq!(
            xavier.fingerprint_line(),
            "CPU: ARMv8 Processor rev 0 (v8l). GPU: NVIDIA [gv11b]. Memory: 7901888. \
             DriveSerial: 0x8a3f19c2"
        );
    }

    #[test]
    fn an_orin_gpu_reads_the_same_on_jetpack_5_and_6() {
        // JetPack 6 moved the GPU node under bus@0 and renamed it (gpu@17000000),
        // and its platform device (17000000.gpu): the chip stays ga10b.
        let jetpack5 = jetson("agx-orin-jetpack5").read_parts();
        let jetpack6 = jetson("agx-orin-jetpack6").read_parts();
        assert_eq!(jetpack6.gpu_names, vec!["NVIDIA [ga10b]"]);
        assert_eq!(jetpack6.gpu_names, jetpack5.gpu_names);
        assert_eq!(jetpack6.drive_serial, jetpack5.drive_serial);
        assert_eq!(jetpack6.cpu_model, jetpack5.cpu_model);
        // MemTotal is what the kernel leaves after its reservations: it moves
        // between kernel releases (README, "On a Jetson").
        assert_ne!(jetpack6.memory_kib, jetpack5.memory_kib);
    }

    #[test]
    fn the_device_tree_and_sys_each_find_the_jetson_gpu() {
        for (board, gpu) in [
            ("agx-orin-jetpack5", "NVIDIA [ga10b]"),
            ("agx-orin-jetpack6", "NVIDIA [ga10b]"),
            ("xavier-nx-jetpack5", "NVIDIA [gv11b]"),
        ] {
            let probe = jetson(board);
            assert_eq!(
                probe.tegra_gpu_in_device_tree().as_deref(),
                Some(gpu),
                "{board}"
            );
            assert_eq!(
                probe.tegra_gpu_in_platform_devices().as_deref(),
                Some(gpu),
                "{board}"
            );
        }
    }

    #[test]
    fn a_jetson_gpu_is_found_in_sys_without_a_device_tree_node_or_named_by_its_soc() {
        // The GPU's device-tree node cannot be read, but /sys binds it.
        let tree = Tree::new();
        tree.file(
            "sys/firmware/devicetree/base/compatible",
            "nvidia,p3737-0000+p3701-0000\0nvidia,tegra234\0",
        )
        .file(
            "sys/devices/platform/gpu.0/of_node/compatible",
            "nvidia,ga10b\0",
        )
        .file(
            "sys/devices/platform/13e00000.host1x/of_node/compatible",
            "nvidia,tegra234-host1x\0",
        )
        .link(
            "sys/bus/platform/devices/13e00000.host1x",
            "../../../devices/platform/13e00000.host1x",
        )
        .link(
            "sys/bus/platform/devices/gpu.0",
            "../../../devices/platform/gpu.0",
        );
        assert_eq!(tree.probe().read_parts().gpu_names, vec!["NVIDIA [ga10b]"]);

        // Neither: the SoC names it.
        fs::remove_file(tree.0.path().join("sys/bus/platform/devices/gpu.0")).unwrap();
        assert_eq!(
            tree.probe().read_parts().gpu_names,
            vec!["NVIDIA [tegra234]"]
        );
    }

    #[test]
    fn other_arm_boards_have_no_tegra_gpu() {
        let tree = Tree::new();
        tree.file("proc/device-tree/model", "Raspberry Pi 5 Model B Rev 1.0\0")
            .file(
                "proc/device-tree/compatible",
                "raspberrypi,5-model-b\0brcm,bcm2712\0",
            )
            .file("proc/device-tree/gpu/compatible", "brcm,bcm2712-v3d\0");
        assert!(tree.probe().read_parts().gpu_names.is_empty());
    }

    #[test]
    fn gpus_are_sorted_deduplicated_and_named_by_drm_labels_when_not_pci() {
        let tree = desktop();
        tree.file("sys/bus/pci/devices/0000:03:00.0/class", "0x030200\n")
            .file("sys/bus/pci/devices/0000:03:00.0/vendor", "0x10de\n")
            .file("sys/bus/pci/devices/0000:03:00.0/device", "0x2204\n")
            .file("sys/bus/pci/devices/0000:04:00.0/class", "0x030000\n")
            .file("sys/bus/pci/devices/0000:04:00.0/vendor", "0x1a03\n")
            .file("sys/bus/pci/devices/0000:04:00.0/device", "0x2000\n")
            .file("sys/class/drm/card1/device/label", "Mali-G610\n");
        assert_eq!(
            tree.probe().read_parts().gpu_names,
            vec!["ASPEED [1a03:2000]", "Mali-G610", "NVIDIA [10de:2204]"]
        );
    }

    #[test]
    fn a_sata_disk_is_found_by_its_mount_source_and_vpd_serial() {
        let tree = Tree::new();
        let mut page = vec![0x00, 0x80, 0x00, 0x10];
        page.extend_from_slice(b"  WD-WX12345678\0\0");
        tree.file("sys/block/sda/device/vpd_pg80", page)
            .file("proc/self/mountinfo", mountinfo("8:1", "/dev/sda1"));
        assert_eq!(
            tree.probe().read_parts().drive_serial.as_deref(),
            Some("WD-WX12345678")
        );
    }

    #[test]
    fn a_disk_serial_comes_from_its_by_id_link_and_proc_mounts_when_need_be() {
        let tree = Tree::new();
        tree.dir("sys/block/sda/device")
            .dir("dev")
            .link("dev/disk/by-id/wwn-0x5002538e40a1b2c3", "../../sda")
            .link(
                "dev/disk/by-id/ata-Samsung_SSD_860_EVO_500GB_S3Z1NB0K999999-part1",
                "../../sda1",
            )
            .link(
                "dev/disk/by-id/ata-Samsung_SSD_860_EVO_500GB_S3Z1NB0K123456",
                "../../sda",
            )
            .link("dev/disk/by-id/ata-Other_Disk_ZZZ", "../../sdb")
            .file(
                "proc/mounts",
                "proc /proc proc rw 0 0\n/dev/sda2 / ext4 rw 0 0\n",
            );
        assert_eq!(
            tree.probe().read_parts().drive_serial.as_deref(),
            Some("S3Z1NB0K123456")
        );
    }

    #[test]
    fn a_mapped_root_leads_to_the_disk_under_it() {
        let tree = Tree::new();
        tree.dir("sys/devices/virtual/block/dm-0/slaves")
            .link(
                "sys/devices/virtual/block/dm-0/slaves/nvme0n1p3",
                "../../../../nvme0n1/nvme0n1p3",
            )
            .file("sys/devices/nvme0n1/nvme0n1p3/partition", "3\n")
            .file("sys/devices/nvme0n1/device/serial", "PHLJ0123ABCD\n")
            .link("sys/block/dm-0", "../devices/virtual/block/dm-0")
            .link("sys/block/nvme0n1", "../devices/nvme0n1")
            .link("sys/class/block/dm-0", "../../devices/virtual/block/dm-0")
            .link(
                "sys/class/block/nvme0n1p3",
                "../../devices/nvme0n1/nvme0n1p3",
            )
            .link("sys/dev/block/253:0", "../../devices/virtual/block/dm-0")
            .file(
                "proc/self/mountinfo",
                mountinfo("253:0", "/dev/mapper/vg-root"),
            );
        assert_eq!(
            tree.probe().read_parts().drive_serial.as_deref(),
            Some("PHLJ0123ABCD")
        );
    }

    #[tokio::test]
    async fn missing_files_read_none_and_unknown_without_an_error() {
        let tree = Tree::new();
        let parts = tree.probe().probe().await.unwrap();
        assert_eq!(
            parts.fingerprint_line(),
            "CPU: unknown. GPU: none. Memory: 0. DriveSerial: unknown"
        );
    }

    #[tokio::test]
    async fn an_overlay_root_has_an_unknown_serial() {
        let tree = desktop();
        fs::write(
            tree.0.path().join("proc/self/mountinfo"),
            "500 400 0:52 / / rw - overlay overlay rw,lowerdir=/a\n",
        )
        .unwrap();
        assert_eq!(tree.probe().probe().await.unwrap().drive_serial, None);
    }

    #[tokio::test]
    async fn two_probes_of_this_machine_agree() {
        let probe = SysinfoProbe::new();
        let first = probe.probe().await.unwrap();
        let second = SysinfoProbe::new().probe().await.unwrap();
        assert_eq!(first, second);
        assert!(!first.cpu_model.is_empty());
        assert!(first.memory_kib > 0);
    }
}
