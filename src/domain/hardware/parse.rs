//! Pure parsers of the texts a hardware probe reads (PROTOCOL §4): `/proc/cpuinfo`,
//! `/proc/meminfo`, the mount tables, PCI ids and classes from sysfs or `lspci -n`, the
//! device tree's `compatible` list, partition names, SCSI VPD pages and udev's
//! `/dev/disk/by-id` names. They take text or bytes and return values; reading the
//! files is the probe's job.

/// A file's text without surrounding whitespace or NULs; `None` when empty.
pub fn trimmed_text(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!text.is_empty()).then(|| text.to_owned())
}

/// A hex number as sysfs writes it (`0x10de`), with or without the `0x`.
pub fn parse_hex(text: &str) -> Option<u32> {
    let digits = text.trim();
    let digits = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
        .unwrap_or(digits);
    u32::from_str_radix(digits, 16).ok()
}

/// A PCI class code (`0xCCSSPP`) of a display controller (class 0x03).
pub fn is_display_controller(class: u32) -> bool {
    class >> 16 == 0x03
}

/// `NVIDIA [10de:2204]`; an unknown vendor as `PCI [abcd:1234]`.
pub fn pci_name(vendor: u16, device: u16) -> String {
    let vendor_name = match vendor {
        0x10de => "NVIDIA",
        0x1002 | 0x1022 => "AMD",
        0x8086 => "Intel",
        0x1a03 => "ASPEED",
        0x102b => "Matrox",
        0x5143 => "Qualcomm",
        0x1af4 | 0x1b36 => "Red Hat",
        0x1234 => "QEMU",
        0x15ad => "VMware",
        0x80ee => "VirtualBox",
        0x1414 => "Microsoft",
        _ => "PCI",
    };
    format!("{vendor_name} [{vendor:04x}:{device:04x}]")
}

/// `lspci -n` lines (`00:02.0 0300: 8086:3e92 (rev 02)`): the display controllers, named
/// by their ids like the sysfs ones.
pub fn gpus_in_lspci(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let class = fields.next()?.trim_end_matches(':');
            let (vendor, device) = fields.next()?.split_once(':')?;
            if !class.starts_with("03") {
                return None;
            }
            Some(pci_name(
                u16::from_str_radix(vendor, 16).ok()?,
                u16::from_str_radix(device, 16).ok()?,
            ))
        })
        .collect()
}

/// `card0`, `card1` … of `/sys/class/drm`, not their connectors (`card0-HDMI-A-1`) nor
/// the render nodes.
pub fn is_drm_card(name: &str) -> bool {
    name.strip_prefix("card")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The entries of a device-tree `compatible` list (NUL-separated strings).
fn compatible_entries(compatible: &[u8]) -> impl Iterator<Item = &str> {
    compatible
        .split(|&b| b == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .filter(|entry| !entry.is_empty())
}

/// The Tegra SoC a device tree's root `compatible` list names (`tegra234` on
/// an Orin, `tegra194` on a Xavier), if any.
pub fn tegra_soc(compatible: &[u8]) -> Option<String> {
    compatible_entries(compatible)
        .filter_map(|entry| entry.strip_prefix("nvidia,"))
        .find(|chip| {
            chip.strip_prefix("tegra")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_owned)
}

/// The integrated GPUs of the Tegra SoCs, by the chip name their device-tree
/// node is `compatible` with: Nano/TX1 gm20b, TX2 gp10b, Xavier gv11b, Orin
/// ga10b, Thor gb10b (and the TK1's gk20a).
const TEGRA_GPUS: [&str; 6] = ["gk20a", "gm20b", "gp10b", "gv11b", "ga10b", "gb10b"];

/// A Jetson's GPU, named from its device-tree node's `compatible` list
/// (`nvidia,ga10b`, or `nvidia,tegra210-gm20b` on older trees): `NVIDIA
/// [ga10b]`. The chip name is fixed by the silicon, so it reads the same on
/// every JetPack release, unlike the board's `model` string.
pub fn tegra_gpu_name(compatible: &[u8]) -> Option<String> {
    compatible_entries(compatible)
        .filter_map(|entry| entry.strip_prefix("nvidia,"))
        .map(|chip| match chip.split_once('-') {
            Some((soc, gpu)) if soc.starts_with("tegra") => gpu,
            _ => chip,
        })
        .find(|gpu| TEGRA_GPUS.contains(gpu))
        .map(|gpu| format!("NVIDIA [{gpu}]"))
}

/// The CPU's model in `/proc/cpuinfo`.
pub fn cpuinfo_model(text: &str) -> Option<String> {
    // x86 and most others say "model name"; older ARM kernels "Processor",
    // MIPS "cpu model", PowerPC "cpu".
    ["model name", "Processor", "cpu model", "cpu"]
        .iter()
        .find_map(|wanted| {
            text.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                let value = value.trim();
                (key.trim() == *wanted && !value.is_empty()).then(|| value.to_owned())
            })
        })
}

/// `MemTotal` of `/proc/meminfo`, in KiB.
pub fn meminfo_total_kib(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Where `/` is mounted from, as `/proc/self/mountinfo` tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootMount {
    /// `major:minor`
    pub device_number: String,
    pub source: String,
}

/// The mount of `/` in `/proc/self/mountinfo` (the last one: later mounts hide earlier ones).
pub fn root_mount_in_mountinfo(text: &str) -> Option<RootMount> {
    text.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.get(4) != Some(&"/") {
            return None;
        }
        let separator = fields.iter().position(|f| *f == "-")?;
        Some(RootMount {
            device_number: (*fields.get(2)?).to_owned(),
            source: (*fields.get(separator + 2)?).to_owned(),
        })
    })
}

/// The source of the (last) mount of `/` in `/proc/mounts`.
pub fn root_source_in_mounts(text: &str) -> Option<String> {
    text.lines().rev().find_map(|line| {
        let mut fields = line.split_whitespace();
        let source = fields.next()?;
        (fields.next()? == "/").then(|| source.to_owned())
    })
}

/// `nvme0n1p2` → `nvme0n1`, `mmcblk0p1` → `mmcblk0`, `sda1` → `sda`; a disk stays as it is.
pub fn strip_partition(name: &str) -> &str {
    if !name.ends_with(|c: char| c.is_ascii_digit()) {
        return name;
    }
    if let Some(p) = name.rfind('p') {
        let (disk, number) = (&name[..p], &name[p + 1..]);
        if !number.is_empty()
            && number.bytes().all(|b| b.is_ascii_digit())
            && disk.ends_with(|c: char| c.is_ascii_digit())
        {
            return disk;
        }
    }
    if ["sd", "hd", "vd", "xvd"]
        .iter()
        .any(|p| name.starts_with(p))
    {
        return name.trim_end_matches(|c: char| c.is_ascii_digit());
    }
    name
}

/// SCSI VPD page 0x80 (unit serial number): 4 header bytes, then the serial.
pub fn serial_in_vpd_page(page: &[u8]) -> Option<String> {
    if page.len() < 4 || page[1] != 0x80 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([page[2], page[3]]));
    let serial = page.get(4..4 + len).unwrap_or(&page[4..]);
    trimmed_text(serial)
}

/// `Samsung_SSD_970_EVO_1TB_S467NX0M123456` → `S467NX0M123456`; a USB id's
/// `-0:0` suffix goes.
pub fn serial_in_disk_id(id: &str) -> Option<String> {
    let (_, serial) = id.rsplit_once('_')?;
    let serial = match serial.rsplit_once('-') {
        Some((head, lun)) if lun.contains(':') => head,
        _ => serial,
    };
    (!serial.is_empty()).then(|| serial.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_strip_to_their_disk() {
        for (name, disk) in [
            ("nvme0n1p2", "nvme0n1"),
            ("nvme0n1", "nvme0n1"),
            ("mmcblk0p1", "mmcblk0"),
            ("mmcblk0", "mmcblk0"),
            ("sda1", "sda"),
            ("sda", "sda"),
            ("vda15", "vda"),
            ("xvda1", "xvda"),
            ("loop0p1", "loop0"),
            ("dm-0", "dm-0"),
            // The 16th SCSI disk is sdp: its first partition is sdp1.
            ("sdp1", "sdp"),
            ("sdp", "sdp"),
            // After the last p comes no number: not a partition suffix.
            ("md0pa1", "md0pa1"),
        ] {
            assert_eq!(strip_partition(name), disk, "{name}");
        }
    }

    #[test]
    fn cpu_models_and_memory_parse_from_proc_text() {
        assert_eq!(
            cpuinfo_model("processor : 0\nProcessor : ARMv7 Processor rev 4 (v7l)\n").as_deref(),
            Some("ARMv7 Processor rev 4 (v7l)")
        );
        assert_eq!(cpuinfo_model("model name :   \n"), None);
        assert_eq!(
            meminfo_total_kib("MemFree: 3 kB\nMemTotal:  42 kB\n"),
            Some(42)
        );
        assert_eq!(meminfo_total_kib("MemTotal: lots\n"), None);
        assert_eq!(
            serial_in_disk_id("Generic_Flash_Disk_ABCD1234-0:0").as_deref(),
            Some("ABCD1234")
        );
        // A dash that is not a USB LUN suffix is part of the serial.
        assert_eq!(
            serial_in_disk_id("WDC_WD10EZEX-08WN4A0_WD-WCC6Y1234567").as_deref(),
            Some("WD-WCC6Y1234567")
        );
        assert_eq!(serial_in_disk_id("no-underscore"), None);
        assert_eq!(serial_in_disk_id("Disk_"), None);
    }

    #[test]
    fn lspci_lines_give_the_display_controllers_by_id() {
        let text = "00:00.0 0600: 8086:3e30 (rev 0d)\n\
                    00:02.0 0300: 8086:3e92 (rev 02)\n\
                    01:00.0 0302: 10de:2204 (rev a1)\n\
                    02:00.0 0300: zzzz:2204\n";
        assert_eq!(
            gpus_in_lspci(text),
            vec!["Intel [8086:3e92]", "NVIDIA [10de:2204]"]
        );
        assert!(gpus_in_lspci("").is_empty());
    }

    #[test]
    fn every_known_gpu_vendor_has_its_name() {
        // The name is part of the fingerprint line: changing one changes a
        // device's hardware hash, so each is pinned here.
        for (vendor, name) in [
            (0x10de, "NVIDIA"),
            (0x1002, "AMD"),
            (0x1022, "AMD"),
            (0x8086, "Intel"),
            (0x1a03, "ASPEED"),
            (0x102b, "Matrox"),
            (0x5143, "Qualcomm"),
            (0x1af4, "Red Hat"),
            (0x1b36, "Red Hat"),
            (0x1234, "QEMU"),
            (0x15ad, "VMware"),
            (0x80ee, "VirtualBox"),
            (0x1414, "Microsoft"),
            (0xabcd, "PCI"),
        ] {
            assert_eq!(
                pci_name(vendor, 0x0042),
                format!("{name} [{vendor:04x}:0042]"),
                "{vendor:04x}"
            );
        }
    }

    #[test]
    fn drm_cards_pci_classes_and_tegra_compatibles_are_told_apart() {
        assert!(is_drm_card("card0") && is_drm_card("card12"));
        assert!(!is_drm_card("card") && !is_drm_card("card0-HDMI-A-1"));
        assert!(!is_drm_card("renderD128"));
        assert_eq!(parse_hex("0x030000\n"), Some(0x03_0000));
        assert!(is_display_controller(0x03_0200) && !is_display_controller(0x06_0100));
    }

    #[test]
    fn tegra_socs_and_their_gpus_are_named_by_chip() {
        let orin = b"nvidia,p3737-0000+p3701-0000\0nvidia,p3701-0000\0nvidia,tegra234\0";
        assert_eq!(tegra_soc(orin).as_deref(), Some("tegra234"));
        assert_eq!(tegra_soc(b"nvidia,tegra194\0").as_deref(), Some("tegra194"));
        assert_eq!(tegra_soc(b"raspberrypi,4-model-b\0brcm,bcm2711\0"), None);
        // Not a SoC: a GPU or a peripheral of one.
        assert_eq!(tegra_soc(b"nvidia,tegra210-gm20b\0nvidia,tegra\0"), None);

        assert_eq!(
            tegra_gpu_name(b"nvidia,ga10b\0").as_deref(),
            Some("NVIDIA [ga10b]")
        );
        assert_eq!(
            tegra_gpu_name(b"nvidia,gv11b").as_deref(),
            Some("NVIDIA [gv11b]")
        );
        assert_eq!(
            tegra_gpu_name(b"nvidia,tegra210-gm20b\0nvidia,gm20b\0").as_deref(),
            Some("NVIDIA [gm20b]")
        );
        assert_eq!(
            tegra_gpu_name(b"nvidia,tegra186-gp10b\0").as_deref(),
            Some("NVIDIA [gp10b]")
        );
        // Other Tegra blocks, the virtual GPU of a guest, other vendors.
        assert_eq!(tegra_gpu_name(b"nvidia,tegra234-host1x\0"), None);
        assert_eq!(tegra_gpu_name(b"nvidia,ga10b-vgpu\0"), None);
        assert_eq!(tegra_gpu_name(b"arm,mali-g610\0"), None);
        assert_eq!(tegra_gpu_name(b""), None);
        assert_eq!(
            tegra_gpu_name(b"\xff\xfe\0nvidia,ga10b\0").as_deref(),
            Some("NVIDIA [ga10b]")
        );
    }

    #[test]
    fn root_mounts_and_vpd_serials_parse() {
        let mountinfo = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                         27 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw\n";
        assert_eq!(
            root_mount_in_mountinfo(mountinfo),
            Some(RootMount {
                device_number: "259:2".into(),
                source: "/dev/nvme0n1p2".into(),
            })
        );
        assert_eq!(
            root_source_in_mounts("proc /proc proc rw 0 0\n/dev/sda2 / ext4 rw 0 0\n").as_deref(),
            Some("/dev/sda2")
        );
        assert_eq!(
            serial_in_vpd_page(b"\0\x80\0\x06 AB12 \0\0").as_deref(),
            Some("AB12")
        );
        assert_eq!(serial_in_vpd_page(b"\0\x83\0\x02AB"), None);
        // The page length bounds the serial: bytes past it are not part of it.
        assert_eq!(
            serial_in_vpd_page(b"\0\x80\0\x04AB12XYZ").as_deref(),
            Some("AB12")
        );
        // A page too short for its header is no page (and no panic).
        assert_eq!(serial_in_vpd_page(b"\0\x80"), None);
        assert_eq!(serial_in_vpd_page(b""), None);
    }
}
