import numpy as np

from data_prep.molecules import build_molecule_set


def test_molecule_graphs_projection_and_brics_mask():
    smiles = [["CC(=O)Oc1ccccc1C(=O)O"], [], ["CN(C)C(=N)NC(=N)N", "not a smiles"], ["CC(=O)Oc1ccccc1C(=O)O", "CCO"]]
    mols = build_molecule_set(smiles)
    assert len(mols.graphs) == 4
    assert mols.invalid_smiles == [(2, "not a smiles")]
    assert mols.molecule_medication.tolist() == [0, 2, 3, 3]
    assert np.allclose(mols.average_projection.sum(axis=1), [1, 0, 1, 1])
    assert np.allclose(mols.average_projection[3], [0, 0, 0.5, 0.5])
    assert mols.medications_with_molecules.tolist() == [True, False, True, True]
    assert mols.fragments == sorted(mols.fragments)
    assert mols.fragment_mask.shape == (4, len(mols.fragments))
    assert not mols.fragment_mask[1].any()
    # aspirin's fragments are shared by medications 0 and 3 (both contain aspirin)
    assert (mols.fragment_mask[0] <= mols.fragment_mask[3]).all()
    for graph in mols.graphs:
        assert graph.x.shape[0] == graph.num_nodes > 0
        assert graph.edge_index.max() < graph.num_nodes


def test_same_smiles_give_the_same_fragment_order():
    smiles = [["CC(=O)Oc1ccccc1C(=O)O"], ["CC(C)Cc1ccc(C(C)C(=O)O)cc1"]]
    assert build_molecule_set(smiles).fragments == build_molecule_set(list(reversed(smiles))).fragments
