//! Checks our hand-written uapi against the real `linux/ublk_cmd.h` (Linux 7.3, from Debian's
//! linux-libc-dev, unpacked by scripts/kernels.sh): a C program prints every size, offset and
//! constant we rely on, and each must equal ours.

use std::collections::HashMap;
use std::mem::{offset_of, size_of};
use std::path::PathBuf;
use std::process::Command;

use ublk::uapi::*;

fn include_dir() -> Option<PathBuf> {
    let p = std::env::var_os("UBLKD_UAPI_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/ublkd/uapi-7.3/usr/include"));
    p.join("linux/ublk_cmd.h").exists().then_some(p)
}

/// (name, C expression) pairs for the generated program, and (name, our value) pairs.
type Table = (Vec<(&'static str, &'static str)>, Vec<(&'static str, u64)>);

macro_rules! table {
    ($( $name:literal => $c:literal, $rust:expr_2021; )*) => {
        (vec![$( ($name, $c) ),*], vec![$( ($name, ($rust) as u64) ),*])
    };
}

#[test]
fn layout_matches_the_kernel_header() {
    let Some(inc) = include_dir() else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "linux/ublk_cmd.h (7.3) not found: run scripts/kernels.sh or set UBLKD_UAPI_INCLUDE"
            );
        }
        eprintln!("SKIP!!! uapi layout test: no 7.3 ublk_cmd.h (run scripts/kernels.sh)");
        return;
    };
    let (c_exprs, rust): Table = table! {
        "sz_ctrl_cmd" => "sizeof(struct ublksrv_ctrl_cmd)", size_of::<ublksrv_ctrl_cmd>();
        "off_ctrl_cmd_queue_id" => "offsetof(struct ublksrv_ctrl_cmd, queue_id)", offset_of!(ublksrv_ctrl_cmd, queue_id);
        "off_ctrl_cmd_len" => "offsetof(struct ublksrv_ctrl_cmd, len)", offset_of!(ublksrv_ctrl_cmd, len);
        "off_ctrl_cmd_addr" => "offsetof(struct ublksrv_ctrl_cmd, addr)", offset_of!(ublksrv_ctrl_cmd, addr);
        "off_ctrl_cmd_data" => "offsetof(struct ublksrv_ctrl_cmd, data)", offset_of!(ublksrv_ctrl_cmd, data);
        "off_ctrl_cmd_dev_path_len" => "offsetof(struct ublksrv_ctrl_cmd, dev_path_len)", offset_of!(ublksrv_ctrl_cmd, dev_path_len);
        "sz_dev_info" => "sizeof(struct ublksrv_ctrl_dev_info)", size_of::<ublksrv_ctrl_dev_info>();
        "off_dev_info_queue_depth" => "offsetof(struct ublksrv_ctrl_dev_info, queue_depth)", offset_of!(ublksrv_ctrl_dev_info, queue_depth);
        "off_dev_info_state" => "offsetof(struct ublksrv_ctrl_dev_info, state)", offset_of!(ublksrv_ctrl_dev_info, state);
        "off_dev_info_max_io_buf_bytes" => "offsetof(struct ublksrv_ctrl_dev_info, max_io_buf_bytes)", offset_of!(ublksrv_ctrl_dev_info, max_io_buf_bytes);
        "off_dev_info_dev_id" => "offsetof(struct ublksrv_ctrl_dev_info, dev_id)", offset_of!(ublksrv_ctrl_dev_info, dev_id);
        "off_dev_info_ublksrv_pid" => "offsetof(struct ublksrv_ctrl_dev_info, ublksrv_pid)", offset_of!(ublksrv_ctrl_dev_info, ublksrv_pid);
        "off_dev_info_flags" => "offsetof(struct ublksrv_ctrl_dev_info, flags)", offset_of!(ublksrv_ctrl_dev_info, flags);
        "off_dev_info_ublksrv_flags" => "offsetof(struct ublksrv_ctrl_dev_info, ublksrv_flags)", offset_of!(ublksrv_ctrl_dev_info, ublksrv_flags);
        "off_dev_info_owner_uid" => "offsetof(struct ublksrv_ctrl_dev_info, owner_uid)", offset_of!(ublksrv_ctrl_dev_info, owner_uid);
        "sz_io_desc" => "sizeof(struct ublksrv_io_desc)", size_of::<ublksrv_io_desc>();
        "off_io_desc_nr_sectors" => "offsetof(struct ublksrv_io_desc, nr_sectors)", offset_of!(ublksrv_io_desc, nr_sectors);
        "off_io_desc_start_sector" => "offsetof(struct ublksrv_io_desc, start_sector)", offset_of!(ublksrv_io_desc, start_sector);
        "off_io_desc_addr" => "offsetof(struct ublksrv_io_desc, addr)", offset_of!(ublksrv_io_desc, addr);
        "sz_io_cmd" => "sizeof(struct ublksrv_io_cmd)", size_of::<ublksrv_io_cmd>();
        "sz_batch_io" => "sizeof(struct ublk_batch_io)", size_of::<ublk_batch_io>();
        "off_batch_io_flags" => "offsetof(struct ublk_batch_io, flags)", offset_of!(ublk_batch_io, flags);
        "off_batch_io_nr_elem" => "offsetof(struct ublk_batch_io, nr_elem)", offset_of!(ublk_batch_io, nr_elem);
        "off_batch_io_elem_bytes" => "offsetof(struct ublk_batch_io, elem_bytes)", offset_of!(ublk_batch_io, elem_bytes);
        "sz_elem_header" => "sizeof(struct ublk_elem_header)", size_of::<ublk_elem_header>();
        "off_elem_buf_index" => "offsetof(struct ublk_elem_header, buf_index)", offset_of!(ublk_elem_header, buf_index);
        "off_elem_result" => "offsetof(struct ublk_elem_header, result)", offset_of!(ublk_elem_header, result);
        "off_io_cmd_tag" => "offsetof(struct ublksrv_io_cmd, tag)", offset_of!(ublksrv_io_cmd, tag);
        "off_io_cmd_result" => "offsetof(struct ublksrv_io_cmd, result)", offset_of!(ublksrv_io_cmd, result);
        "off_io_cmd_addr" => "offsetof(struct ublksrv_io_cmd, addr)", offset_of!(ublksrv_io_cmd, addr);
        "sz_basic" => "sizeof(struct ublk_param_basic)", size_of::<ublk_param_basic>();
        "off_basic_logical_bs_shift" => "offsetof(struct ublk_param_basic, logical_bs_shift)", offset_of!(ublk_param_basic, logical_bs_shift);
        "off_basic_max_sectors" => "offsetof(struct ublk_param_basic, max_sectors)", offset_of!(ublk_param_basic, max_sectors);
        "off_basic_dev_sectors" => "offsetof(struct ublk_param_basic, dev_sectors)", offset_of!(ublk_param_basic, dev_sectors);
        "off_basic_virt_boundary_mask" => "offsetof(struct ublk_param_basic, virt_boundary_mask)", offset_of!(ublk_param_basic, virt_boundary_mask);
        "sz_discard" => "sizeof(struct ublk_param_discard)", size_of::<ublk_param_discard>();
        "off_discard_max_write_zeroes_sectors" => "offsetof(struct ublk_param_discard, max_write_zeroes_sectors)", offset_of!(ublk_param_discard, max_write_zeroes_sectors);
        "off_discard_max_discard_segments" => "offsetof(struct ublk_param_discard, max_discard_segments)", offset_of!(ublk_param_discard, max_discard_segments);
        "sz_devt" => "sizeof(struct ublk_param_devt)", size_of::<ublk_param_devt>();
        "sz_zoned" => "sizeof(struct ublk_param_zoned)", size_of::<ublk_param_zoned>();
        "sz_dma" => "sizeof(struct ublk_param_dma_align)", size_of::<ublk_param_dma_align>();
        "sz_shmem_reg" => "sizeof(struct ublk_shmem_buf_reg)", size_of::<ublk_shmem_buf_reg>();
        "sz_seg" => "sizeof(struct ublk_param_segment)", size_of::<ublk_param_segment>();
        "off_params_basic" => "offsetof(struct ublk_params, basic)", offset_of!(ublk_params, basic);
        "off_params_discard" => "offsetof(struct ublk_params, discard)", offset_of!(ublk_params, discard);
        "off_params_devt" => "offsetof(struct ublk_params, devt)", offset_of!(ublk_params, devt);
        "off_params_zoned" => "offsetof(struct ublk_params, zoned)", offset_of!(ublk_params, zoned);
        "off_params_dma" => "offsetof(struct ublk_params, dma)", offset_of!(ublk_params, dma);
        "off_params_seg" => "offsetof(struct ublk_params, seg)", offset_of!(ublk_params, seg);
        "UBLK_U_CMD_GET_QUEUE_AFFINITY" => "UBLK_U_CMD_GET_QUEUE_AFFINITY", UBLK_U_CMD_GET_QUEUE_AFFINITY;
        "UBLK_U_CMD_GET_DEV_INFO" => "UBLK_U_CMD_GET_DEV_INFO", UBLK_U_CMD_GET_DEV_INFO;
        "UBLK_U_CMD_ADD_DEV" => "UBLK_U_CMD_ADD_DEV", UBLK_U_CMD_ADD_DEV;
        "UBLK_U_CMD_DEL_DEV" => "UBLK_U_CMD_DEL_DEV", UBLK_U_CMD_DEL_DEV;
        "UBLK_U_CMD_START_DEV" => "UBLK_U_CMD_START_DEV", UBLK_U_CMD_START_DEV;
        "UBLK_U_CMD_STOP_DEV" => "UBLK_U_CMD_STOP_DEV", UBLK_U_CMD_STOP_DEV;
        "UBLK_U_CMD_SET_PARAMS" => "UBLK_U_CMD_SET_PARAMS", UBLK_U_CMD_SET_PARAMS;
        "UBLK_U_CMD_GET_PARAMS" => "UBLK_U_CMD_GET_PARAMS", UBLK_U_CMD_GET_PARAMS;
        "UBLK_U_CMD_START_USER_RECOVERY" => "UBLK_U_CMD_START_USER_RECOVERY", UBLK_U_CMD_START_USER_RECOVERY;
        "UBLK_U_CMD_END_USER_RECOVERY" => "UBLK_U_CMD_END_USER_RECOVERY", UBLK_U_CMD_END_USER_RECOVERY;
        "UBLK_U_CMD_GET_DEV_INFO2" => "UBLK_U_CMD_GET_DEV_INFO2", UBLK_U_CMD_GET_DEV_INFO2;
        "UBLK_U_CMD_GET_FEATURES" => "UBLK_U_CMD_GET_FEATURES", UBLK_U_CMD_GET_FEATURES;
        "UBLK_U_CMD_DEL_DEV_ASYNC" => "UBLK_U_CMD_DEL_DEV_ASYNC", UBLK_U_CMD_DEL_DEV_ASYNC;
        "UBLK_U_CMD_UPDATE_SIZE" => "UBLK_U_CMD_UPDATE_SIZE", UBLK_U_CMD_UPDATE_SIZE;
        "UBLK_U_CMD_QUIESCE_DEV" => "UBLK_U_CMD_QUIESCE_DEV", UBLK_U_CMD_QUIESCE_DEV;
        "UBLK_U_CMD_TRY_STOP_DEV" => "UBLK_U_CMD_TRY_STOP_DEV", UBLK_U_CMD_TRY_STOP_DEV;
        "UBLK_U_CMD_REG_BUF" => "UBLK_U_CMD_REG_BUF", UBLK_U_CMD_REG_BUF;
        "UBLK_U_CMD_UNREG_BUF" => "UBLK_U_CMD_UNREG_BUF", UBLK_U_CMD_UNREG_BUF;
        "UBLK_U_IO_FETCH_REQ" => "UBLK_U_IO_FETCH_REQ", UBLK_U_IO_FETCH_REQ;
        "UBLK_U_IO_COMMIT_AND_FETCH_REQ" => "UBLK_U_IO_COMMIT_AND_FETCH_REQ", UBLK_U_IO_COMMIT_AND_FETCH_REQ;
        "UBLK_U_IO_NEED_GET_DATA" => "UBLK_U_IO_NEED_GET_DATA", UBLK_U_IO_NEED_GET_DATA;
        "UBLK_U_IO_REGISTER_IO_BUF" => "UBLK_U_IO_REGISTER_IO_BUF", UBLK_U_IO_REGISTER_IO_BUF;
        "UBLK_U_IO_UNREGISTER_IO_BUF" => "UBLK_U_IO_UNREGISTER_IO_BUF", UBLK_U_IO_UNREGISTER_IO_BUF;
        "UBLK_U_IO_PREP_IO_CMDS" => "UBLK_U_IO_PREP_IO_CMDS", UBLK_U_IO_PREP_IO_CMDS;
        "UBLK_U_IO_COMMIT_IO_CMDS" => "UBLK_U_IO_COMMIT_IO_CMDS", UBLK_U_IO_COMMIT_IO_CMDS;
        "UBLK_U_IO_FETCH_IO_CMDS" => "UBLK_U_IO_FETCH_IO_CMDS", UBLK_U_IO_FETCH_IO_CMDS;
        "UBLK_BATCH_F_HAS_ZONE_LBA" => "UBLK_BATCH_F_HAS_ZONE_LBA", UBLK_BATCH_F_HAS_ZONE_LBA;
        "UBLK_BATCH_F_HAS_BUF_ADDR" => "UBLK_BATCH_F_HAS_BUF_ADDR", UBLK_BATCH_F_HAS_BUF_ADDR;
        "UBLK_BATCH_F_AUTO_BUF_REG_FALLBACK" => "UBLK_BATCH_F_AUTO_BUF_REG_FALLBACK", UBLK_BATCH_F_AUTO_BUF_REG_FALLBACK;
        "UBLKSRV_IO_BUF_OFFSET" => "UBLKSRV_IO_BUF_OFFSET", UBLKSRV_IO_BUF_OFFSET;
        "UBLK_MAX_QUEUE_DEPTH" => "UBLK_MAX_QUEUE_DEPTH", UBLK_MAX_QUEUE_DEPTH;
        "UBLK_QID_OFF" => "UBLK_QID_OFF", UBLK_QID_OFF;
        "UBLK_TAG_OFF" => "UBLK_TAG_OFF", UBLK_TAG_OFF;
        "UBLK_F_SUPPORT_ZERO_COPY" => "UBLK_F_SUPPORT_ZERO_COPY", UBLK_F_SUPPORT_ZERO_COPY;
        "UBLK_F_USER_RECOVERY" => "UBLK_F_USER_RECOVERY", UBLK_F_USER_RECOVERY;
        "UBLK_F_USER_RECOVERY_REISSUE" => "UBLK_F_USER_RECOVERY_REISSUE", UBLK_F_USER_RECOVERY_REISSUE;
        "UBLK_F_CMD_IOCTL_ENCODE" => "UBLK_F_CMD_IOCTL_ENCODE", UBLK_F_CMD_IOCTL_ENCODE;
        "UBLK_F_USER_COPY" => "UBLK_F_USER_COPY", UBLK_F_USER_COPY;
        "UBLK_F_USER_RECOVERY_FAIL_IO" => "UBLK_F_USER_RECOVERY_FAIL_IO", UBLK_F_USER_RECOVERY_FAIL_IO;
        "UBLK_F_AUTO_BUF_REG" => "UBLK_F_AUTO_BUF_REG", UBLK_F_AUTO_BUF_REG;
        "UBLK_F_QUIESCE" => "UBLK_F_QUIESCE", UBLK_F_QUIESCE;
        "UBLK_F_PER_IO_DAEMON" => "UBLK_F_PER_IO_DAEMON", UBLK_F_PER_IO_DAEMON;
        "UBLK_F_BATCH_IO" => "UBLK_F_BATCH_IO", UBLK_F_BATCH_IO;
        "UBLK_F_SAFE_STOP_DEV" => "UBLK_F_SAFE_STOP_DEV", UBLK_F_SAFE_STOP_DEV;
        "UBLK_F_SHMEM_ZC" => "UBLK_F_SHMEM_ZC", UBLK_F_SHMEM_ZC;
        "UBLK_F_IO_DESC_SIZE" => "UBLK_F_IO_DESC_SIZE", UBLK_F_IO_DESC_SIZE;
        "UBLK_IO_F_FUA" => "UBLK_IO_F_FUA", UBLK_IO_F_FUA;
        "UBLK_IO_F_NOUNMAP" => "UBLK_IO_F_NOUNMAP", UBLK_IO_F_NOUNMAP;
        "UBLK_IO_F_SHMEM_ZC" => "UBLK_IO_F_SHMEM_ZC", UBLK_IO_F_SHMEM_ZC;
        "UBLK_IO_OP_WRITE_ZEROES" => "UBLK_IO_OP_WRITE_ZEROES", UBLK_IO_OP_WRITE_ZEROES;
        "UBLK_ATTR_VOLATILE_CACHE" => "UBLK_ATTR_VOLATILE_CACHE", UBLK_ATTR_VOLATILE_CACHE;
        "UBLK_ATTR_FUA" => "UBLK_ATTR_FUA", UBLK_ATTR_FUA;
        "UBLK_PARAM_TYPE_DISCARD" => "UBLK_PARAM_TYPE_DISCARD", UBLK_PARAM_TYPE_DISCARD;
        "UBLK_S_DEV_QUIESCED" => "UBLK_S_DEV_QUIESCED", UBLK_S_DEV_QUIESCED;
        "UBLK_S_DEV_FAIL_IO" => "UBLK_S_DEV_FAIL_IO", UBLK_S_DEV_FAIL_IO;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("layout.c");
    let mut c = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/ioctl.h>\n#include <linux/ublk_cmd.h>\nint main(void) {\n",
    );
    for (name, expr) in &c_exprs {
        c.push_str(&format!(
            "  printf(\"{name} %llu\\n\", (unsigned long long)({expr}));\n"
        ));
    }
    c.push_str("  return 0;\n}\n");
    std::fs::write(&src, c).unwrap();
    let exe = dir.path().join("layout");
    let out = Command::new("cc")
        .arg("-I")
        .arg(&inc)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "compiling against {}: {}",
        inc.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&exe).output().unwrap();
    let kernel: HashMap<String, u64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    let mut bad = vec![];
    for (name, ours) in &rust {
        let theirs = kernel[*name];
        if theirs != *ours {
            bad.push(format!("{name}: header {theirs:#x}, ours {ours:#x}"));
        }
    }
    assert!(bad.is_empty(), "uapi mismatches:\n{}", bad.join("\n"));
    assert_eq!(kernel.len(), rust.len());
}
